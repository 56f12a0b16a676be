"""Work of the fused attention with and without the keypoint-attention score, counted, no GPU needed.

The Triton interpreter runs every program of a launch through one builder object; wrapping its
`create_dot` and `create_exp` / `create_exp2` counts the multiply-adds of every tile product
(M * K * N per `tl.dot`, masked lanes included, as a GPU computes them) and the elements of every
exponential, over the whole launch. The counts go through the public `kernels.attention`, so they
use the tiles the launcher picks for the shape.

    python bench/attention_work.py            # coarse stage: N 66 / 126, d 64, 12 heads, fp16

prints per shape the counts without and with the score and the score's overhead in percent.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

NUM_HEADS = 12
HEAD_DIM = 64
COARSE_LENGTHS = (66, 126)  # 1 quality + 17 keypoint + 48 / 108 patch tokens: 256x192 / 384x288
SCORE_ROWS = (1, 17)  # the 16 keypoint rows whose attention is scored (as the model passes them)
FIRST_PATCH = 18


@contextlib.contextmanager
def count_interpreter_work() -> Iterator[dict[str, int]]:
    """Counts {"dot_macs", "exp_elements"} of every kernel run under the interpreter in the block."""
    from triton.runtime.interpreter import interpreter_builder as builder

    counts = {"dot_macs": 0, "exp_elements": 0}
    dot, exp, exp2 = builder.create_dot, builder.create_exp, builder.create_exp2

    def counted_dot(a, b, acc, *args):
        m, k = a.data.shape[-2:]
        counts["dot_macs"] += m * k * b.data.shape[-1]
        return dot(a, b, acc, *args)

    def counted(fn):
        def wrapper(arg):
            counts["exp_elements"] += arg.data.size
            return fn(arg)
        return wrapper

    builder.create_dot, builder.create_exp, builder.create_exp2 = counted_dot, counted(exp), counted(exp2)
    try:
        yield counts
    finally:
        for name in ("create_dot", "create_exp", "create_exp2"):  # back to the class's methods
            del builder.__dict__[name]


def attention_work(n: int, with_score: bool, dtype: torch.dtype = torch.float16, batch: int = 1) -> dict[str, int]:
    """Counted work of one `kernels.attention` forward, or `kernels.attention_with_score` at the
    coarse stage's score ranges."""
    from kernels.fused_attention import attention, attention_with_score

    q, k, v = torch.randn(3, batch, NUM_HEADS, n, HEAD_DIM).to(dtype).unbind(0)
    with count_interpreter_work() as counts:
        if with_score:
            attention_with_score(q, k, v, SCORE_ROWS, (FIRST_PATCH, n))
        else:
            attention(q, k, v)
    return counts


def main() -> None:
    print(f"fused attention forward, B 1, H {NUM_HEADS}, d {HEAD_DIM}, fp16, score rows {SCORE_ROWS}, "
          f"columns ({FIRST_PATCH}, N); counted under the Triton interpreter")
    print(f"{'N':>4}  {'dot MACs':>12}  {'+ score':>12}  {'overhead':>8}  {'exp elems':>10}  {'+ score':>10}  "
          f"{'overhead':>8}")
    for n in COARSE_LENGTHS:
        base, scored = attention_work(n, False), attention_work(n, True)
        dot_over = 100 * (scored["dot_macs"] / base["dot_macs"] - 1)
        exp_over = 100 * (scored["exp_elements"] / base["exp_elements"] - 1)
        print(f"{n:>4}  {base['dot_macs']:>12,}  {scored['dot_macs']:>12,}  {dot_over:>7.1f}%  "
              f"{base['exp_elements']:>10,}  {scored['exp_elements']:>10,}  {exp_over:>7.1f}%")


if __name__ == "__main__":
    main()
