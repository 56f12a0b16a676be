"""Host-side cost of one call of each Triton op, with the kernel launches stubbed out.

What remains is the Python between the caller and the GPU: argument checks, the choice of the
launch configuration, output allocation, the device guard and, with gradients, the autograd
wrapper. On a GPU the coarse stage's attention kernel runs in about 10 us, so a host path much
longer than that leaves the GPU waiting at small batches. Shapes: SHaRPose-B at 256x192 (12
heads, d = 64, coarse N = 66 with the keypoint score over 48 patch columns, fine stage of 8
sequences of 126 tokens, composition of D = 768).

    python bench/bench_host_overhead.py [--calls 2000] [--repeats 5]

Runs on the CPU (the launches never happen, so no GPU and no interpreter work is timed); CPU
tensors pass the device check with TRITON_INTERPRET=1, set here before triton is imported. On the
CPU the varlen and composition ops also read `cu_seqlens` / `order` to check their values, which
they skip on a GPU; the lines marked "as on a GPU" skip those checks too.

Each line: the fastest and the median of the timed rounds (mean per call within a round), in CPU
time of this process (`time.process_time`, one torch thread), so that other processes on a shared
machine do not count; the fastest round is the better estimate of the cost itself.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

import kernels  # noqa: E402
from kernels import fused_attention, token_composition, varlen_fused_attention  # noqa: E402


class _NoLaunch:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args)` returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_launches() -> None:
    for module in (fused_attention, varlen_fused_attention, token_composition):
        for name, value in vars(module).items():
            if isinstance(value, triton.runtime.KernelInterface) and name.startswith("_"):
                setattr(module, name, _NoLaunch())


WARM_UP_S = 1.0


def per_call_us(call: Callable[[], object], calls: int, repeats: int) -> tuple[float, float]:
    """(fastest, median) over `repeats` rounds of the mean time of one call, in microseconds."""
    # warm-up: caches, lazy imports, and the first ~0.5 s of a process, whose calls run up to twice
    # as long on this class of machine
    start = time.process_time()
    while time.process_time() - start < WARM_UP_S:
        call()
    rounds = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            call()
        rounds.append((time.process_time() - start) / calls * 1e6)
    return min(rounds), statistics.median(rounds)


def cases() -> dict[str, Callable[[], object]]:
    B, H, N, d = 8, 12, 66, 64
    K, N_c, k = 17, 48, 20
    qkv = torch.randn(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # the model's strided views
    q, k_, v = qkv.unbind(0)
    q_grad = q.detach().clone().requires_grad_()

    L = K + N_c + 3 * k
    T = B * L
    packed = torch.randn(T, 3, H, d)
    pq, pk, pv = packed.unbind(1)
    cu_seqlens = torch.arange(0, T + 1, L, dtype=torch.int32)

    D = 768
    keypoints, fine_pos = torch.randn(K, D), torch.randn(4 * N_c, D)
    fine_embed, reuse = torch.randn(4 * B * k, D), torch.randn(B * k, D)
    coarse = torch.randn(B, N_c, D)
    order = torch.stack([torch.randperm(N_c) for _ in range(B)])

    return {
        "attention, no grad": lambda: kernels.attention(q, k_, v),
        "attention + score, no grad": lambda: kernels.attention_with_score(
            q, k_, v, (1, K), (1 + K, 1 + K + N_c), score_weight=0.5),
        "attention, q requires grad (forward)": lambda: kernels.attention(q_grad, k_, v),
        "varlen_attention, no grad": lambda: kernels.varlen_attention(pq, pk, pv, cu_seqlens, L),
        "compose_tokens, no grad": lambda: kernels.compose_tokens(
            keypoints, fine_embed, fine_pos, reuse, coarse, order, cu_seqlens, (8, 6), L),
    }


def skip_value_checks() -> None:
    """What a GPU call skips: reading cu_seqlens / order on the host."""
    varlen_fused_attention._check_varlen_values = lambda *args: None
    token_composition._check_compose_values = lambda *args: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is printed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stub_launches()
    print(f"host time per call, kernel launches stubbed out (torch {torch.__version__}, triton {triton.__version__}, "
          f"{'CUDA' if torch.cuda.is_available() else 'CPU tensors'}; {args.repeats} rounds x {args.calls} calls)")
    print(f"  {'':48s} {'fastest':>9s} {'median':>9s}")

    def report(name: str, call: Callable[[], object]) -> None:
        with torch.enable_grad() if "requires grad" in name else torch.no_grad():
            fastest, median = per_call_us(call, args.calls, args.repeats)
        print(f"  {name:48s} {fastest:6.1f} us {median:6.1f} us")

    for name, call in cases().items():
        report(name, call)
    skip_value_checks()
    for name, call in cases().items():
        if name.startswith(("varlen", "compose")):
            report(name + " (as on a GPU)", call)


if __name__ == "__main__":
    main()
