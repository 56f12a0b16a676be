"""Micro-benchmark of the fused attention (+ keypoint-attention score) at SHaRPose's shapes.

On CUDA, per shape (B 64 / 256, H 12, d 32 / 64):
  coarse stage, N 66 / 126, score rows (1, 17), columns (18, N):
    ours + score | ours, no score | torch SDPA (flash backend when it takes the shape)
    | explicit softmax path (kernels.reference.attention with the score: materialises N x N)
  fine stage, N 125 / 224, no score:
    ours | torch SDPA
and prints ms per call, the EMA overhead of the score (ours + score vs ours), ours vs SDPA and the
explicit path vs ours. `--backward` times forward + backward instead of the forward alone.

Then the fine stage as the model runs it, packed variable-length sequences (kernels.varlen_fused_attention):
B sequences of length 17 + N_c + 3 k_i, N_c 48 (256x192) / 108 (384x288), k_i uniform in 0..N_c
(fixed seed), max_seqlen = 17 + 4 N_c:
    ours varlen | ours fused on the padded (B, H, L_max, d) batch (no mask: the cost of computing
    on the padding) | torch SDPA on the padded batch with a key-padding mask | torch's own
    varlen_attn (torch.nn.attention.varlen, flash; fp16/bf16, when this torch has it)
and ours varlen vs the masked padded SDPA.

On CPU (no CUDA) the Triton kernel would run under the interpreter, which says nothing about its
speed, so only the reference paths (SDPA and the explicit softmax path; the varlen reference) are
timed, at a small batch.

    python bench/bench_attention.py [--dtype bfloat16|float16|float32] [--backward] [--batches 64 256]
                                    [--no-varlen]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:  # the kernel module imports triton; keep the interpreter switch consistent
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import reference  # noqa: E402

H = 12
COARSE = [(66, True), (126, True)]   # (N, with score): 1 quality + 17 keypoints + 48 / 108 patches
FINE = [(125, False), (224, False)]  # 17 keypoints + fine/coarse tokens (alpha 0.4, 256x192) / more
VARLEN_NC = [48, 108]  # coarse patches N_c of the fine stage's packed sequences: 256x192 / 384x288
NUM_KEYPOINTS = 17


def _sdpa_context():
    """Flash backend when torch has the context manager (falls back to the default choice)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    except Exception:  # noqa: BLE001 - older torch
        return contextlib.nullcontext()


def _make_inputs(B, N, d, dtype, device, requires_grad):
    x = torch.randn(B, N, 3 * H * d, device=device, dtype=dtype, requires_grad=requires_grad)
    qkv = x.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    return x, qkv[0], qkv[1], qkv[2]


def _timer_cuda(fn, backward, x):
    import triton.testing

    if backward:
        def step():
            out = fn()
            out.backward(torch.ones_like(out))
        return triton.testing.do_bench(step, grad_to_none=[x])
    return triton.testing.do_bench(fn)


def _timer_cpu(fn, backward, x, repeat=5):
    def step():
        out = fn()
        if backward:
            out.backward(torch.ones_like(out))
            x.grad = None
    step()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def bench_cuda(batches, head_dims, dtype, backward):
    from kernels.fused_attention import attention, attention_with_score

    rows = []
    for B in batches:
        for d in head_dims:
            for N, with_score in COARSE + FINE:
                x, q, k, v = _make_inputs(B, N, d, dtype, "cuda", backward)
                scored = (q, k, v, (1, 17), (18, N))
                r = {"B": B, "N": N, "d": d, "stage": "coarse" if with_score else "fine"}
                r["ours"] = _timer_cuda(lambda: attention(q, k, v), backward, x)
                with _sdpa_context():
                    r["sdpa"] = _timer_cuda(lambda: F.scaled_dot_product_attention(q, k, v), backward, x)
                if with_score:
                    r["ours+score"] = _timer_cuda(lambda: attention_with_score(*scored)[0], backward, x)
                    r["explicit+score"] = _timer_cuda(lambda: reference.attention_with_score(*scored)[0], backward, x)
                rows.append(r)
    return rows


def bench_cpu(batches, head_dims, backward):
    rows = []
    for B in batches:
        for d in head_dims:
            for N, with_score in COARSE + FINE:
                x, q, k, v = _make_inputs(B, N, d, torch.float32, "cpu", backward)
                r = {"B": B, "N": N, "d": d, "stage": "coarse" if with_score else "fine"}
                r["sdpa"] = _timer_cpu(lambda: F.scaled_dot_product_attention(q, k, v), backward, x)
                if with_score:
                    r["explicit+score"] = _timer_cpu(
                        lambda: reference.attention_with_score(q, k, v, (1, 17), (18, N))[0], backward, x)
                rows.append(r)
    return rows


def _varlen_inputs(B, n_c, d, dtype, device, requires_grad, seed=0):
    """B packed fine-stage sequences, lengths 17 + N_c + 3 k_i, as the model's strided qkv views."""
    gen = torch.Generator().manual_seed(seed)
    lengths = NUM_KEYPOINTS + n_c + 3 * torch.randint(0, n_c + 1, (B,), generator=gen)
    cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32).to(device)
    T = int(lengths.sum())
    x = torch.randn(T, 3 * H * d, device=device, dtype=dtype, requires_grad=requires_grad)
    q, k, v = x.reshape(T, 3, H, d).unbind(1)
    return lengths, cu, x, q, k, v


def _padded_inputs(lengths, d, dtype, device, requires_grad):
    """The same batch padded to its longest sequence: (B, H, L, d) views and the key-padding mask."""
    B, L = len(lengths), int(lengths.max())
    x = torch.randn(B, L, 3 * H * d, device=device, dtype=dtype, requires_grad=requires_grad)
    qkv = x.reshape(B, L, 3, H, d).permute(2, 0, 3, 1, 4)
    mask = (torch.arange(L) < lengths[:, None]).to(device)[:, None, None, :]
    return x, qkv[0], qkv[1], qkv[2], mask


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn
    except Exception:  # noqa: BLE001 - older torch
        return None


def bench_cuda_varlen(batches, head_dims, dtype, backward):
    from kernels.fused_attention import attention
    from kernels.varlen_fused_attention import varlen_attention

    torch_varlen = _torch_varlen()
    rows = []
    for B in batches:
        for d in head_dims:
            for n_c in VARLEN_NC:
                max_seqlen = NUM_KEYPOINTS + 4 * n_c
                lengths, cu, x, q, k, v = _varlen_inputs(B, n_c, d, dtype, "cuda", backward)
                L = int(lengths.max())
                r = {"B": B, "N_c": n_c, "d": d, "mean L": float(lengths.float().mean()), "max L": L}
                r["varlen"] = _timer_cuda(lambda: varlen_attention(q, k, v, cu, max_seqlen), backward, x)
                if torch_varlen is not None and dtype != torch.float32:
                    try:
                        r["torch varlen"] = _timer_cuda(
                            lambda: torch_varlen(q, k, v, cu, cu, max_seqlen, max_seqlen), backward, x)
                    except Exception:  # noqa: BLE001 - unsupported GPU / dtype / signature
                        pass
                xp, qp, kp, vp, mask = _padded_inputs(lengths, d, dtype, "cuda", backward)
                r["padded"] = _timer_cuda(lambda: attention(qp, kp, vp), backward, xp)
                with _sdpa_context():
                    r["sdpa masked"] = _timer_cuda(
                        lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask), backward, xp)
                rows.append(r)
    return rows


def bench_cpu_varlen(batches, head_dims, backward):
    rows = []
    for B in batches:
        for d in head_dims:
            for n_c in VARLEN_NC:
                max_seqlen = NUM_KEYPOINTS + 4 * n_c
                lengths, cu, x, q, k, v = _varlen_inputs(B, n_c, d, torch.float32, "cpu", backward)
                r = {"B": B, "N_c": n_c, "d": d, "mean L": float(lengths.float().mean()), "max L": int(lengths.max())}
                r["reference"] = _timer_cpu(lambda: reference.varlen_attention(q, k, v, cu, max_seqlen), backward, x)
                xp, qp, kp, vp, mask = _padded_inputs(lengths, d, torch.float32, "cpu", backward)
                r["sdpa masked"] = _timer_cpu(
                    lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask), backward, xp)
                rows.append(r)
    return rows


def print_varlen_table(rows, cuda):
    cols = ["varlen", "torch varlen", "padded", "sdpa masked"] if cuda else ["reference", "sdpa masked"]
    head = f"{'B':>4} {'N_c':>4} {'d':>3} {'mean L':>7} {'max L':>5} " + " ".join(f"{c + ' ms':>16}" for c in cols)
    head += f" {'varlen/SDPA masked':>19}" if cuda else ""
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['B']:>4} {r['N_c']:>4} {r['d']:>3} {r['mean L']:>7.1f} {r['max L']:>5} "
        line += " ".join(f"{_fmt(r.get(c)):>16}" for c in cols)
        if cuda:
            line += f" {_fmt(r['varlen'] / r['sdpa masked'], '.2f'):>19}"
        print(line)


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def print_table(rows, cuda):
    cols = ["ours+score", "ours", "sdpa", "explicit+score"] if cuda else ["sdpa", "explicit+score"]
    head = f"{'stage':>6} {'B':>4} {'N':>4} {'d':>3} " + " ".join(f"{c + ' ms':>17}" for c in cols)
    if cuda:
        head += f" {'EMA overhead':>13} {'ours/SDPA':>10} {'explicit/ours+score':>20}"
    else:
        head += f" {'explicit/SDPA':>14}"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['stage']:>6} {r['B']:>4} {r['N']:>4} {r['d']:>3} " + " ".join(f"{_fmt(r.get(c)):>17}" for c in cols)
        if cuda:
            overhead = 100 * (r["ours+score"] / r["ours"] - 1) if "ours+score" in r else None
            explicit = r["explicit+score"] / r["ours+score"] if "ours+score" in r else None
            line += f" {_fmt(overhead, '+.1f') + ' %' if overhead is not None else '-':>13}"
            line += f" {_fmt(r['ours'] / r['sdpa'], '.2f'):>10} {_fmt(explicit, '.2f'):>20}"
        else:
            explicit = r["explicit+score"] / r["sdpa"] if "explicit+score" in r else None
            line += f" {_fmt(explicit, '.2f'):>14}"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--no-varlen", action="store_true", help="skip the packed fine-stage (varlen) table")
    args = parser.parse_args()
    mode = "forward + backward" if args.backward else "forward"
    if CUDA:
        batches = args.batches or [64, 256]
        print(f"# {torch.cuda.get_device_name()}, {args.dtype}, H={H}, {mode}; "
              "triton.testing.do_bench, mean ms")
        print_table(bench_cuda(batches, args.head_dims, getattr(torch, args.dtype), args.backward), cuda=True)
        if not args.no_varlen:
            print(f"\n# fine stage, packed variable-length sequences (H={H}, {mode}); ms per call")
            print_varlen_table(bench_cuda_varlen(batches, args.head_dims, getattr(torch, args.dtype), args.backward),
                               cuda=True)
    else:
        batches = args.batches or [4]
        print(f"# no CUDA device: timing only the reference paths on CPU (float32, H={H}, {mode}, "
              "median of 5). The Triton kernel runs here only under the interpreter, whose speed "
              "means nothing; run on a GPU for the real comparison.")
        print_table(bench_cpu(batches, args.head_dims, args.backward), cuda=False)
        if not args.no_varlen:
            print(f"\n# fine stage, packed variable-length sequences: reference paths only (float32, H={H}, {mode})")
            print_varlen_table(bench_cpu_varlen(batches, args.head_dims, args.backward), cuda=False)


if __name__ == "__main__":
    main()
