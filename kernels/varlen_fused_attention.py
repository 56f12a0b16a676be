"""Softmax attention over packed variable-length sequences (Triton), forward and backward.

One file, Liger-Kernel style: the Triton kernels, the launchers, their registration as PyTorch
ops (`torch.ops.sharpose.varlen_attention` and its backward, see kernels/library.py) and the
functional entry point `varlen_attention`, whose signature is that of
`kernels.reference.varlen_attention` (the oracle the tests compare against). The per-tile work
is `kernels.fused_attention`'s (`attn_fwd_tile`, `attn_bwd_delta_tile`, `attn_bwd_dkdv_tile`,
`attn_bwd_dq_tile`), reused unchanged, as are its launch configurations (`attention_config`):
the kernels here only turn (program id, head, sequence) into base pointers and lengths.

The layout (that of FlashAttention's varlen API, self-attention within each sequence)
    q, k, v are (T, H, d) with any strides (the model passes `qkv(x).reshape(T, 3, H, d).unbind(1)`,
    three strided views of one projection; nothing is copied). `cu_seqlens` (R + 1,) int32:
    sequence i is rows cu_seqlens[i] .. cu_seqlens[i + 1] - 1 of all three. `max_seqlen`, a
    python int bounding every length, only sizes the launch grid: the lengths are read by the
    kernels at run time, so there is no host-device sync and no recompilation for new lengths
    or a new bound. The output (and dq, dk, dv) is a contiguous (T, H, d) buffer, so the caller's
    `out.reshape(T, H * d)` is free. The log-sum-exp (log2 domain) is an (H, T) float32 buffer.

Forward: `_varlen_attn_fwd`, grid (cdiv(max_seqlen, BLOCK_M), H, R); program (i, h, s).
    The program loads start = cu_seqlens[s] and length = cu_seqlens[s + 1] - start, returns at
    once when i * BLOCK_M >= length (max_seqlen is only a bound), and otherwise runs
    `attn_fwd_tile` on base pointers offset to row `start`, head h (64-bit offsets) with
    seq_len_q = seq_len_k = length: BLOCK_M query rows against the sequence's keys, online
    softmax, masked loads / stores at the sequence's end, so no row of a neighbouring sequence
    is read or written.

Backward (FlashAttention-2, deterministic, no atomics), three kernels:
    1. `_varlen_attn_bwd_preprocess`, grid (cdiv(T, BLOCK_M), H): delta = rowsum(dO * O) does not
       care about sequence boundaries, so it runs over the packed rows directly (no idle programs).
    2. `_varlen_attn_bwd_dkdv`, grid (cdiv(max_seqlen, BLOCK_N), H, R): a program owns BLOCK_N key
       rows of sequence s, loops over that sequence's query blocks (`attn_bwd_dkdv_tile`).
    3. `_varlen_attn_bwd_dq`, grid (cdiv(max_seqlen, BLOCK_M), H, R): a program owns BLOCK_M query
       rows, loops over the sequence's key blocks (`attn_bwd_dq_tile`).
    Programs past their sequence's end return early, as in the forward.

Every row of `out`, `dq`, `dk`, `dv` in 0 .. cu_seqlens[R] - 1 is written, provided every length
is at most `max_seqlen`. That is the caller's contract; it is checked (with the other value
checks: cu_seqlens[0] == 0, non-decreasing, cu_seqlens[R] == T) only when `cu_seqlens` is on the
CPU, where reading it costs no device sync.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from torch import Tensor

from kernels.device import KERNEL_DTYPES, CheckedSignatures, cdiv, check_kernel_device, device_guard
from kernels.fused_attention import (
    LOG2E,
    MAX_HEAD_DIM,
    AttentionConfig,
    attention_config,
    attn_bwd_delta_tile,
    attn_bwd_dkdv_tile,
    attn_bwd_dq_tile,
    attn_fwd_tile,
    lse_placeholder,
)
from kernels.library import LAUNCH, TRACED, KernelOp, call_path

__all__ = [
    "varlen_attention",
    "varlen_attention_forward",
    "varlen_attention_backward",
]

_MAX_GRID_YZ = 65535  # CUDA limit of grid dimensions 1 and 2 (heads, sequences)

# The (H, T) log-sum-exp / delta buffers have head stride T and the preprocess runs over T rows:
# T changes from batch to batch, so do not specialise on it (no variant for T % 16 == 0).
_RUNTIME_INTS = ["stride_lse_h", "stride_delta_h", "num_tokens", "store_lse"]


# ----------------------------------------------------------------------------------------------
# Kernels: (program id, head, sequence) -> base pointers and length; the tiles do the rest.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _sequence_bounds(cu_seqlens_ptr, seq):
    """(first packed row as int64, length) of sequence `seq`."""
    start = tl.load(cu_seqlens_ptr + seq)
    end = tl.load(cu_seqlens_ptr + seq + 1)
    return start.to(tl.int64), end - start


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _varlen_attn_fwd(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, cu_seqlens_ptr,
    stride_qt, stride_qh, stride_qd,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_ot, stride_oh, stride_od,
    stride_lse_h,
    qk_scale, store_lse,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ONE_KEY_TILE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64)
    start, length = _sequence_bounds(cu_seqlens_ptr, tl.program_id(2))
    if start_m >= length:  # max_seqlen is only a bound: nothing to do past this sequence's end
        return
    lse = lse_ptr + head * stride_lse_h + start
    attn_fwd_tile(
        q_ptr + start * stride_qt + head * stride_qh,
        k_ptr + start * stride_kt + head * stride_kh,
        v_ptr + start * stride_vt + head * stride_vh,
        out_ptr + start * stride_ot + head * stride_oh,
        lse,
        lse,  # score_base: unused without HAS_SCORE
        stride_qt, stride_qd, stride_kt, stride_kd, stride_vt, stride_vd, stride_ot, stride_od,
        1, 0,
        start_m, length, length, qk_scale, store_lse, 0.0,
        0, 0, 0, 0,
        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, False, ONE_KEY_TILE, DOT_PRECISION,
    )


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _varlen_attn_bwd_preprocess(
    out_ptr, d_out_ptr, delta_ptr,
    stride_ot, stride_oh, stride_od,
    stride_dot, stride_doh, stride_dod,
    stride_delta_h,
    num_tokens,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # delta is per row: the packed rows need no sequence boundaries
    row0 = (tl.program_id(0) * BLOCK_M).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    attn_bwd_delta_tile(
        out_ptr + row0 * stride_ot + head * stride_oh,
        d_out_ptr + row0 * stride_dot + head * stride_doh,
        delta_ptr + head * stride_delta_h + row0,
        stride_ot, stride_od, stride_dot, stride_dod, 1,
        0, (num_tokens - row0).to(tl.int32),
        HEAD_DIM, BLOCK_D, BLOCK_M,
    )


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _varlen_attn_bwd_dkdv(
    q_ptr, k_ptr, v_ptr, d_out_ptr, lse_ptr, delta_ptr, cu_seqlens_ptr, dk_ptr, dv_ptr,
    stride_qt, stride_qh, stride_qd,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_dot, stride_doh, stride_dod,
    stride_lse_h,
    stride_dkt, stride_dkh, stride_dkd,
    stride_dvt, stride_dvh, stride_dvd,
    sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    head = tl.program_id(1).to(tl.int64)
    start, length = _sequence_bounds(cu_seqlens_ptr, tl.program_id(2))
    if start_n >= length:
        return
    lse_offset = head * stride_lse_h + start  # lse and delta share one (H, T) layout
    attn_bwd_dkdv_tile(
        q_ptr + start * stride_qt + head * stride_qh,
        k_ptr + start * stride_kt + head * stride_kh,
        v_ptr + start * stride_vt + head * stride_vh,
        d_out_ptr + start * stride_dot + head * stride_doh,
        lse_ptr + lse_offset,
        delta_ptr + lse_offset,
        dk_ptr + start * stride_dkt + head * stride_dkh,
        dv_ptr + start * stride_dvt + head * stride_dvh,
        stride_qt, stride_qd, stride_kt, stride_kd, stride_vt, stride_vd, stride_dot, stride_dod,
        1, stride_dkt, stride_dkd, stride_dvt, stride_dvd,
        start_n, length, length, sm_scale, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION,
    )


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _varlen_attn_bwd_dq(
    q_ptr, k_ptr, v_ptr, d_out_ptr, lse_ptr, delta_ptr, cu_seqlens_ptr, dq_ptr,
    stride_qt, stride_qh, stride_qd,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_dot, stride_doh, stride_dod,
    stride_lse_h,
    stride_dqt, stride_dqh, stride_dqd,
    sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1).to(tl.int64)
    start, length = _sequence_bounds(cu_seqlens_ptr, tl.program_id(2))
    if start_m >= length:
        return
    lse_offset = head * stride_lse_h + start
    attn_bwd_dq_tile(
        q_ptr + start * stride_qt + head * stride_qh,
        k_ptr + start * stride_kt + head * stride_kh,
        v_ptr + start * stride_vt + head * stride_vh,
        d_out_ptr + start * stride_dot + head * stride_doh,
        lse_ptr + lse_offset,
        delta_ptr + lse_offset,
        dq_ptr + start * stride_dqt + head * stride_dqh,
        stride_qt, stride_qd, stride_kt, stride_kd, stride_vt, stride_vd, stride_dot, stride_dod,
        1, stride_dqt, stride_dqd,
        start_m, length, length, sm_scale, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION,
    )


# ----------------------------------------------------------------------------------------------
# Argument checks (no device sync)
# ----------------------------------------------------------------------------------------------


def _check_varlen_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k, v must be packed (T, H, d) tensors, got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            "q, k, v must have one shape (T, H, d): the same packed tokens, heads and head dim, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"unsupported dtype {q.dtype}; expected float32, float16 or bfloat16")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(
            f"cu_seqlens must be a 1-D tensor of R + 1 >= 1 offsets, got shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32 (FlashAttention varlen convention), got {cu_seqlens.dtype}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens must be on {q.device} with q, k, v, got {cu_seqlens.device}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise TypeError(
            f"max_seqlen must be a python int (a static bound on every length, not a tensor), "
            f"got {type(max_seqlen).__name__}"
        )
    if max_seqlen < 0:
        raise ValueError(f"max_seqlen must be >= 0, got {max_seqlen}")
    T, H, _ = q.shape
    R = cu_seqlens.shape[0] - 1
    if H > _MAX_GRID_YZ or R > _MAX_GRID_YZ:
        raise ValueError(f"at most {_MAX_GRID_YZ} heads and {_MAX_GRID_YZ} sequences per call, got H={H}, R={R}")
    if T > 2**31 - 1:
        raise ValueError(f"at most 2**31 - 1 packed tokens (cu_seqlens is int32), got T={T}")
    if not 1 <= q.shape[2] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {MAX_HEAD_DIM}], got {q.shape[2]}")
    check_kernel_device(q.device, "varlen_attention", q.dtype)


# The launch configuration of the calls that passed `_check_varlen_args`.
_CHECKED: CheckedSignatures[AttentionConfig] = CheckedSignatures("varlen_attention")


def _check_and_configure(q, k, v, cu_seqlens, max_seqlen) -> AttentionConfig:
    _check_varlen_args(q, k, v, cu_seqlens, max_seqlen)
    return attention_config(q.shape[2], q.dtype, interpreter=not q.is_cuda, seq_len=max_seqlen)


def _check_varlen_args_once(q, k, v, cu_seqlens, max_seqlen) -> AttentionConfig:
    try:  # max_seqlen's type too (True == 1); the fp32 dot precision is a global PyTorch setting
        signature = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
                     cu_seqlens.shape, cu_seqlens.dtype, cu_seqlens.device, type(max_seqlen), max_seqlen,
                     torch.get_float32_matmul_precision())
    except AttributeError:  # not tensors: the checks say which
        return _check_and_configure(q, k, v, cu_seqlens, max_seqlen)
    return _CHECKED.get(signature, _check_and_configure, q, k, v, cu_seqlens, max_seqlen)


def _check_varlen_values(cu_seqlens: torch.Tensor, num_tokens: int, max_seqlen: int) -> None:
    """Checks of the values of a CPU `cu_seqlens` (free there; a device sync on a GPU)."""
    cu = cu_seqlens.long()
    if int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens[0] must be 0, got {int(cu[0])}")
    lengths = cu[1:] - cu[:-1]
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
    if int(cu[-1]) != num_tokens:
        raise ValueError(f"cu_seqlens[-1] = {int(cu[-1])} but q, k, v hold T = {num_tokens} packed rows")
    longest = int(lengths.max()) if lengths.numel() else 0
    if longest > max_seqlen:
        raise ValueError(f"a sequence of length {longest} exceeds max_seqlen={max_seqlen}")


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _config(q: torch.Tensor, max_seqlen: int, config: AttentionConfig | None) -> AttentionConfig:
    return config or attention_config(q.shape[2], q.dtype, interpreter=q.device.type != "cuda", seq_len=max_seqlen)


def varlen_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    store_lse: bool = True,
    config: AttentionConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel; returns (out, lse). No argument checks.

    `out` (T, H, d) (any strides) and `lse` (H, T) float32 with unit stride along T may be given;
    `config` overrides the tile sizes. Rows outside every sequence are not written. Without
    `store_lse` (no backward will follow) the log-sum-exp is neither allocated nor stored (None).
    """
    T, H, d = q.shape
    R = cu_seqlens.shape[0] - 1
    cfg = _config(q, max_seqlen, config)
    if out is None:
        out = q.new_empty(T, H, d)
    if not store_lse:
        lse = None
    elif lse is None:
        lse = q.new_empty(H, T, dtype=torch.float32)
    else:
        assert lse.stride(1) == 1 or T <= 1, "lse must have unit stride along the tokens"
    grid = (cdiv(max_seqlen, cfg.fwd.block_m), H, R)
    if T == 0 or 0 in grid:
        return out, lse
    lse_ptr, lse_stride = (lse, lse.stride(0)) if store_lse else (lse_placeholder(q), T)  # placeholder: never read
    with device_guard(q):
        _varlen_attn_fwd[grid](
            q, k, v, out, lse_ptr, cu_seqlens,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            lse_stride,
            scale * LOG2E, int(store_lse),
            HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_M=cfg.fwd.block_m, BLOCK_N=cfg.fwd.block_n,
            ONE_KEY_TILE=max_seqlen <= cfg.fwd.block_n, DOT_PRECISION=cfg.dot_precision,
            num_warps=cfg.fwd.num_warps, num_stages=cfg.fwd.num_stages,
        )
    return out, lse


def varlen_attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    *,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels; returns (dq, dk, dv), contiguous (T, H, d) unless given."""
    T, H, d = q.shape
    R = cu_seqlens.shape[0] - 1
    cfg = _config(q, max_seqlen, config)
    dq = torch.empty((T, H, d), dtype=q.dtype, device=q.device) if dq is None else dq
    dk = torch.empty((T, H, d), dtype=k.dtype, device=k.device) if dk is None else dk
    dv = torch.empty((T, H, d), dtype=v.dtype, device=v.device) if dv is None else dv
    if T == 0 or H == 0 or R == 0 or max_seqlen == 0:
        return dq, dk, dv
    delta = torch.empty_like(lse)
    with device_guard(q):
        _varlen_attn_bwd_preprocess[(cdiv(T, cfg.delta.block_m), H)](
            out, dout, delta,
            *out.stride(), *dout.stride(), delta.stride(0),
            T,
            HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_M=cfg.delta.block_m,
            num_warps=cfg.delta.num_warps, num_stages=cfg.delta.num_stages,
        )
        _varlen_attn_bwd_dkdv[(cdiv(max_seqlen, cfg.dkdv.block_n), H, R)](
            q, k, v, dout, lse, delta, cu_seqlens, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(),
            lse.stride(0), *dk.stride(), *dv.stride(),
            scale, scale * LOG2E,
            HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_M=cfg.dkdv.block_m, BLOCK_N=cfg.dkdv.block_n,
            DOT_PRECISION=cfg.dot_precision,
            num_warps=cfg.dkdv.num_warps, num_stages=cfg.dkdv.num_stages,
        )
        _varlen_attn_bwd_dq[(cdiv(max_seqlen, cfg.dq.block_m), H, R)](
            q, k, v, dout, lse, delta, cu_seqlens, dq,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(),
            lse.stride(0), *dq.stride(),
            scale, scale * LOG2E,
            HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_M=cfg.dq.block_m, BLOCK_N=cfg.dq.block_n,
            DOT_PRECISION=cfg.dot_precision,
            num_warps=cfg.dq.num_warps, num_stages=cfg.dq.num_stages,
        )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# PyTorch ops (kernels.library): sharpose::varlen_attention and its backward
# ----------------------------------------------------------------------------------------------


def _varlen_impl(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float
) -> tuple[Tensor, Tensor]:
    return varlen_attention_forward(q, k, v, cu_seqlens, max_seqlen, scale)


def _varlen_fake(q, k, v, cu_seqlens, max_seqlen, scale):
    T, H, d = q.shape
    return q.new_empty((T, H, d)), q.new_empty((H, T), dtype=torch.float32)


def _varlen_backward_impl(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu_seqlens: Tensor,
    max_seqlen: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return varlen_attention_backward(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale)


def _varlen_backward_fake(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_varlen_backward_op = KernelOp("varlen_attention_backward", _varlen_backward_impl, _varlen_backward_fake)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_seqlen = max_seqlen
    ctx.scale = scale


def _backward(ctx, dout, _):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _varlen_backward_op(dout, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.scale)
    return dq, dk, dv, None, None, None


_varlen_op = KernelOp("varlen_attention", _varlen_impl, _varlen_fake, backward=_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# The functional entry point
# ----------------------------------------------------------------------------------------------


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention within each packed sequence (Triton); same contract as
    `kernels.reference.varlen_attention`.

    q, k, v (T, H, d), any strides; cu_seqlens (R + 1,) int32, sequence i = rows cu_seqlens[i] ..
    cu_seqlens[i + 1] - 1; max_seqlen a python int >= every length (sizes the launch grid only).
    Returns a contiguous (T, H, d) tensor: `out.reshape(T, H * d)` copies nothing. Shapes, dtypes
    and devices are checked without a device sync; the values of cu_seqlens only on the CPU
    (outside a trace, where they can be read).
    """
    path = call_path(q, k, v)
    if path == TRACED:  # symbolic shapes, which the per-signature memo cannot hold
        _check_varlen_args(q, k, v, cu_seqlens, max_seqlen)
        config = None
    else:
        config = _check_varlen_args_once(q, k, v, cu_seqlens, max_seqlen)
        if not cu_seqlens.is_cuda:  # free to check: no device sync
            _check_varlen_values(cu_seqlens, q.shape[0], max_seqlen)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if path == LAUNCH:
        return varlen_attention_forward(q, k, v, cu_seqlens, max_seqlen, scale, store_lse=False, config=config)[0]
    return _varlen_op.run(path, q, k, v, cu_seqlens, max_seqlen, scale)[0]
