"""Registers, spills and shared memory of the attention kernels, compiled ahead of time.

No GPU needed: the fused (batched) attention kernels and the variable-length (cu_seqlens) ones
are compiled for sm_80 and sm_90 with the launchers' configurations (see kernels.aot) and
measured with ptxas / cuobjdump from the triton wheel.

    python bench/kernel_resources.py                       # the model's configurations
    python bench/kernel_resources.py --head-dims 16 32 64 128 --dtypes float16 bfloat16 float32
    python bench/kernel_resources.py --kernels varlen      # only the variable-length kernels
    python bench/kernel_resources.py --seq-lens 66 126 long   # forward tiles chosen for these lengths

The forward's tiles depend on the sequence length (`attention_config(..., seq_len=N)`): one row per
distinct configuration among `--seq-lens` ("long": no length given); the backward's do not, and are
built once. fp32 is built with IEEE and TF32 dots (torch's "highest" vs "high" matmul precision).
CTA/SM: CTAs resident per SM as limited by registers, shared memory and warps (kernels.aot.ctas_per_sm).
"""
from __future__ import annotations

import argparse
import sys
import time

from kernels.aot import (
    attention_kernel_specs,
    format_table,
    measure_specs,
    tools_available,
    varlen_attention_kernel_specs,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--caps", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--kernels", nargs="+", choices=["attention", "varlen"], default=["attention", "varlen"],
                        help="which kernel families to compile (default: both)")
    parser.add_argument("--seq-lens", nargs="+", default=["66", "126", "137", "287", "long"],
                        help="sequence lengths whose forward tiles to build ('long': no length)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile workers (default: CPU count)")
    args = parser.parse_args()
    seq_lens = tuple(None if n == "long" else int(n) for n in args.seq_lens)
    ok, why = tools_available()
    if not ok:
        sys.exit(f"cannot measure: {why}")
    start = time.perf_counter()
    shape = (tuple(args.caps), tuple(args.head_dims), tuple(args.dtypes))
    specs = []
    if "attention" in args.kernels:
        specs += attention_kernel_specs(*shape, seq_lens=seq_lens)
    if "varlen" in args.kernels:
        specs += varlen_attention_kernel_specs(*shape, seq_lens=seq_lens)
    rows = measure_specs(specs, args.jobs)
    print(format_table(rows))
    print(f"\n{len(rows)} kernels compiled in {time.perf_counter() - start:.1f} s "
          "(regs: registers per thread; smem B: shared memory per block in bytes; "
          "mma: tensor-core instructions in the PTX, wgmma on sm_90 / mma.sync)")


if __name__ == "__main__":
    main()
