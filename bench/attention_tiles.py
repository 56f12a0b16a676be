"""Forward tiles of the fused / varlen attention per model shape, and the useful fraction of the work.

Useful area = sum over (sequence, head) of N_q * N_k, the entries of the attention matrix; computed
area = what the forward's programs multiply: per sequence, ceil(N / BLOCK_M) query blocks, each
over ceil(N / BLOCK_N) key tiles of BLOCK_M x BLOCK_N (programs past a varlen sequence's end
return at once and are not counted). Printed for the tiles before per-length selection (one
forward tile per head dim and dtype) and for `attention_config` now. No GPU needed.

    python bench/attention_tiles.py [--dtypes float16 float32]
"""
from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # only the configuration tables are used

import torch  # noqa: E402

from kernels.fused_attention import attention_config  # noqa: E402

NUM_KEYPOINTS = 17
# name: (head dim, coarse patches N_c, alpha) as in sharpose/models/factory.py
MODELS = {
    "small 256x192": (32, 48, 0.5),
    "small 384x288": (32, 108, 0.5),
    "base 256x192": (64, 48, 0.4),
    "base 384x288": (64, 108, 0.3),
}
# The forward tile (BLOCK_M, BLOCK_N) of attention_config before it depended on the length
# (d <= 64): 64 x 64 for fp16 / bf16, 32 x 32 for fp32.
TILES_BEFORE = {torch.float16: (64, 64), torch.bfloat16: (64, 64), torch.float32: (32, 32)}


def computed_area(lengths: list[int], block_m: int, block_n: int) -> int:
    return sum(math.ceil(n / block_m) * block_m * math.ceil(n / block_n) * block_n for n in lengths)


def fine_lengths(num_coarse: int, alpha: float, batch: int = 64, seed: int = 0) -> dict[str, list[int]]:
    """Fine-stage sequence lengths 17 + N_c + 3 k: every sample refining k_max = ceil(alpha N_c)
    (fixed budget, one padded length) and k uniform in 0..k_max (adaptive budget, ragged)."""
    k_max = math.ceil(alpha * num_coarse)
    generator = torch.Generator().manual_seed(seed)
    ks = torch.randint(0, k_max + 1, (batch,), generator=generator).tolist()
    return {
        "fine, fixed": [NUM_KEYPOINTS + num_coarse + 3 * k_max] * batch,
        "fine, ragged": [NUM_KEYPOINTS + num_coarse + 3 * k for k in ks],
    }


def rows(dtypes: list[torch.dtype]) -> list[tuple]:
    table = []
    for dtype in dtypes:
        for model, (d, num_coarse, alpha) in MODELS.items():
            stages = {"coarse": [1 + NUM_KEYPOINTS + num_coarse]} | fine_lengths(num_coarse, alpha)
            for stage, lengths in stages.items():
                bound = max(lengths)  # max_seqlen of the varlen launch, the length of a batched one
                useful = sum(n * n for n in lengths)
                before = TILES_BEFORE[dtype]
                fwd = attention_config(d, dtype, seq_len=bound).fwd
                after = (fwd.block_m, fwd.block_n)
                table.append((
                    str(dtype).removeprefix("torch."), model, stage, bound, d,
                    f"{before[0]}x{before[1]}", useful / computed_area(lengths, *before),
                    f"{after[0]}x{after[1]}", useful / computed_area(lengths, *after),
                    "one" if bound <= fwd.block_n else math.ceil(bound / fwd.block_n),
                    fwd.num_stages,
                ))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    args = parser.parse_args()
    heads = ("dtype", "model", "stage", "N max", "d", "tile before", "useful", "tile now", "useful",
             "key tiles", "stages")
    print(" | ".join(heads))
    print(" | ".join("---" for _ in heads))
    for r in rows([getattr(torch, name) for name in args.dtypes]):
        cells = [f"{c:.1%}" if isinstance(c, float) else str(c) for c in r]
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
