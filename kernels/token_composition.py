"""Sparse token composition of SHaRPose's fine stage (Triton), forward and backward.

One file, Liger-Kernel style: the Triton kernels, the launchers, their registration as PyTorch
ops (`torch.ops.sharpose.compose_tokens` and its backward, see kernels/library.py) and the
functional entry points `compose_tokens` / `compose_tokens_padded`, whose signatures are those
of `kernels.reference` (the oracle the tests compare against).

The contract: the fine-stage token layout of docs/design.md, section 3, and the op of section 4.3.
Below, sample i selects k_i patches p = order[i, s] (slots s < k_i), its sequence has length
L_i = K + N_c + 3 k_i, its first slot is o_i = k_0 + ... + k_{i-1} = (cu_seqlens[i] - i (K + N_c)) / 3,
and f(p, c) is the fine index of child c of p. The released code builds the same tokens with a full-size
reuse MLP, a nearest upsample, an add over all N_f fine patches, two gathers and a cat; here
the caller embeds only the selected fine patches and runs the reuse MLP on the selected parents
only, and the composition is a single pass over the output.

Forward: `_compose_fwd_kernel`, grid (R, cdiv(max_seqlen, BLOCK_ROWS), cdiv(D, BLOCK_D)).
    A program owns BLOCK_ROWS consecutive positions r of sample i's sequence and BLOCK_D
    channels. From cu_seqlens[i], cu_seqlens[i + 1] it derives k_i and o_i; each row then finds
    its source by index arithmetic alone:
        r < K                  keypoint row r
        K <= r < K + 4 k_i     v = r - K: slot s = v // 4, child c = v % 4, patch p = order[i, s];
                               fine_embed row 4 o_i + v, fine_pos row f(p, c), reuse row o_i + s
        K + 4 k_i <= r < L_i   rank k_i + (v - 4 k_i) = v - 3 k_i of order: p; coarse_embed[i, p]
    Every source is a masked 2-D tile load (masked-off rows move no memory), the fine rows add
    (fine_embed + fine_pos) + reuse in the input dtype (the rounding of PyTorch's eager adds),
    and one masked store writes rows r < L_i. Programs past L_i (max_seqlen is only a bound)
    store nothing, so neither the grid nor the kernel depends on the actual lengths: no host
    sync and no recompilation per batch.

Backward (no gradient for order / cu_seqlens), three kernels:
    `_compose_bwd_fine_kernel`, grid (R, cdiv(k_max, BLOCK_SLOTS), cdiv(D, BLOCK_D)): a program
        owns BLOCK_SLOTS parent slots of sample i. For each child it loads the 4 gradient rows
        K + 4 s + c, copies them to d fine_embed (a bijection), atomically adds them (fp32) into
        the (N_f, D) fp32 d fine_pos buffer at f(p, c) (positions are shared across samples), and
        sums the four in fp32 into d reuse[o_i + s].
    `_compose_bwd_coarse_kernel`, grid (R, cdiv(N_c, BLOCK_ROWS), cdiv(D, BLOCK_D)): a program owns
        BLOCK_ROWS ranks q of order[i]; it writes d coarse_embed[i, order[i, q]] = the gradient row
        K + 4 k_i + (q - k_i) when q >= k_i and zero when q < k_i (a selected patch's coarse input
        embedding is not in the sequence). Since order[i] is a permutation, every row of
        d coarse_embed is written exactly once and the buffer needs no zero fill.
    `_compose_bwd_keypoint_kernel`, grid (K, cdiv(D, BLOCK_D)): keypoint row r sums the gradient
        rows cu_seqlens[i] + r over all samples, BLOCK_SAMPLES at a time, in fp32
        (deterministic, no atomics).

Shapes: keypoint_tokens (K, D), fine_embed (4 S_p, D), fine_pos (N_f, D), reuse (S_p, D),
coarse_embed (R, N_c, D), order (R, N_c) int32/int64, cu_seqlens (R + 1,) int32. Any row
strides; the channel dim must be contiguous (it is made so otherwise). `order[i]` must be a
permutation of 0 .. N_c - 1 (argsort output); cu_seqlens / order values are checked only for CPU
tensors (interpreter), where reading them costs no device sync.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from torch import Tensor

from kernels.device import CheckedSignatures, cdiv, check_kernel_device, device_guard, interpreter_enabled
from kernels.library import LAUNCH, TRACED, KernelOp, call_path
from kernels.reference import _check_compose_args, _check_compose_values, _padded_args

__all__ = [
    "compose_tokens",
    "compose_tokens_padded",
    "CompositionConfig",
    "composition_config",
    "compose_tokens_forward",
    "compose_tokens_backward",
]

_MAX_GRID_YZ = 65535  # CUDA limit of grid dimensions 1 and 2


# ----------------------------------------------------------------------------------------------
# Index helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _sample_layout(cu_seqlens_ptr, sample, num_keypoints, num_patches):
    """(first packed row, k_i, o_i) of sample i, from cu_seqlens alone."""
    seq_start = tl.load(cu_seqlens_ptr + sample)
    seq_end = tl.load(cu_seqlens_ptr + sample + 1)
    fixed = num_keypoints + num_patches  # tokens every sequence has
    num_selected = (seq_end - seq_start - fixed) // 3
    selected_offset = (seq_start - sample * fixed) // 3
    return seq_start, num_selected, selected_offset


@triton.jit
def _fine_index(patch, child, COARSE_W: tl.constexpr):
    """Fine-grid index of child c = 2 dy + dx of coarse patch p (fine grid is 2 hc x 2 wc)."""
    FINE_W: tl.constexpr = 2 * COARSE_W
    top_left = (patch // COARSE_W) * (2 * FINE_W) + (patch % COARSE_W) * 2
    return top_left + (child // 2) * FINE_W + child % 2


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _compose_fwd_kernel(
    keypoint_ptr, fine_embed_ptr, fine_pos_ptr, reuse_ptr, coarse_ptr, order_ptr, cu_seqlens_ptr, out_ptr,
    stride_keypoint, stride_fine_embed, stride_fine_pos, stride_reuse,
    stride_coarse_sample, stride_coarse_patch, stride_order, stride_out,
    num_keypoints, num_patches, dim,
    COARSE_W: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    sample = tl.program_id(0)
    row_block = tl.program_id(1)
    d_block = tl.program_id(2)
    seq_start, num_selected, selected_offset = _sample_layout(cu_seqlens_ptr, sample, num_keypoints, num_patches)
    seq_len = num_keypoints + num_patches + 3 * num_selected
    num_fine = 4 * num_selected

    # which source each row of this block reads (positions inside the sequence)
    rows = row_block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    in_seq = rows < seq_len
    is_keypoint = rows < num_keypoints
    visual = tl.maximum(rows - num_keypoints, 0)  # position among the visual tokens
    is_fine = (rows >= num_keypoints) & (visual < num_fine)
    is_coarse = in_seq & (rows >= num_keypoints) & (visual >= num_fine)
    slot = visual // 4  # parent slot of a fine row
    child = visual % 4
    rank = tl.where(is_fine, slot, visual - 3 * num_selected)  # rank in order[i]: k_i + (v - 4 k_i)
    patch = tl.load(order_ptr + sample.to(tl.int64) * stride_order + rank, mask=is_fine | is_coarse, other=0)
    fine_index = _fine_index(patch, child, COARSE_W)

    keypoint_row = tl.where(is_keypoint, rows, 0).to(tl.int64)
    fine_embed_row = (4 * selected_offset + visual).to(tl.int64)
    reuse_row = (selected_offset + slot).to(tl.int64)
    coarse_offset = sample.to(tl.int64) * stride_coarse_sample + patch.to(tl.int64) * stride_coarse_patch
    out_row = (seq_start + rows).to(tl.int64)

    cols = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = (cols < dim)[None, :]
    cols = cols[None, :]
    keypoint = tl.load(keypoint_ptr + keypoint_row[:, None] * stride_keypoint + cols,
                       mask=is_keypoint[:, None] & col_ok, other=0.0)
    fine_mask = is_fine[:, None] & col_ok
    fine_embed = tl.load(fine_embed_ptr + fine_embed_row[:, None] * stride_fine_embed + cols, mask=fine_mask, other=0.0)
    fine_pos = tl.load(fine_pos_ptr + fine_index.to(tl.int64)[:, None] * stride_fine_pos + cols,
                       mask=fine_mask, other=0.0)
    reuse = tl.load(reuse_ptr + reuse_row[:, None] * stride_reuse + cols, mask=fine_mask, other=0.0)
    coarse = tl.load(coarse_ptr + coarse_offset[:, None] + cols, mask=is_coarse[:, None] & col_ok, other=0.0)

    fine = (fine_embed + fine_pos) + reuse  # same rounding as the eager adds
    tokens = tl.where(is_keypoint[:, None], keypoint, tl.where(is_fine[:, None], fine, coarse))
    tl.store(out_ptr + out_row[:, None] * stride_out + cols, tokens, mask=in_seq[:, None] & col_ok)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _compose_bwd_fine_kernel(
    grad_ptr, order_ptr, cu_seqlens_ptr, d_fine_embed_ptr, d_fine_pos_ptr, d_reuse_ptr,
    stride_grad, stride_order, stride_d_fine_embed, stride_d_fine_pos, stride_d_reuse,
    num_keypoints, num_patches, dim,
    COARSE_W: tl.constexpr, BLOCK_SLOTS: tl.constexpr, BLOCK_D: tl.constexpr,
    FINE_EMBED_GRAD: tl.constexpr, FINE_POS_GRAD: tl.constexpr, REUSE_GRAD: tl.constexpr,
):
    sample = tl.program_id(0)
    slot_block = tl.program_id(1)
    d_block = tl.program_id(2)
    seq_start, num_selected, selected_offset = _sample_layout(cu_seqlens_ptr, sample, num_keypoints, num_patches)

    slots = slot_block * BLOCK_SLOTS + tl.arange(0, BLOCK_SLOTS)
    slot_ok = slots < num_selected
    patch = tl.load(order_ptr + sample.to(tl.int64) * stride_order + slots, mask=slot_ok, other=0)
    first_child_row = (seq_start + num_keypoints + 4 * slots).to(tl.int64)  # gradient row of child 0
    packed_slot = (selected_offset + slots).to(tl.int64)

    cols = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = slot_ok[:, None] & (cols < dim)[None, :]
    cols = cols[None, :]
    reuse_grad = tl.zeros([BLOCK_SLOTS, BLOCK_D], dtype=tl.float32)
    for child in tl.static_range(4):
        grad = tl.load(grad_ptr + (first_child_row + child)[:, None] * stride_grad + cols, mask=mask, other=0.0)
        if FINE_EMBED_GRAD:
            tl.store(d_fine_embed_ptr + (4 * packed_slot + child)[:, None] * stride_d_fine_embed + cols, grad,
                     mask=mask)
        if FINE_POS_GRAD:  # fine positions are shared by all samples: fp32 atomics
            fine_index = _fine_index(patch, child, COARSE_W).to(tl.int64)
            tl.atomic_add(d_fine_pos_ptr + fine_index[:, None] * stride_d_fine_pos + cols, grad.to(tl.float32),
                          mask=mask, sem="relaxed")
        reuse_grad += grad.to(tl.float32)
    if REUSE_GRAD:
        tl.store(d_reuse_ptr + packed_slot[:, None] * stride_d_reuse + cols,
                 reuse_grad.to(d_reuse_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _compose_bwd_coarse_kernel(
    grad_ptr, order_ptr, cu_seqlens_ptr, d_coarse_ptr,
    stride_grad, stride_order, stride_d_coarse_sample, stride_d_coarse_patch,
    num_keypoints, num_patches, dim,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    sample = tl.program_id(0)
    rank_block = tl.program_id(1)
    d_block = tl.program_id(2)
    seq_start, num_selected, _ = _sample_layout(cu_seqlens_ptr, sample, num_keypoints, num_patches)

    ranks = rank_block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    rank_ok = ranks < num_patches
    unselected = rank_ok & (ranks >= num_selected)
    patch = tl.load(order_ptr + sample.to(tl.int64) * stride_order + ranks, mask=rank_ok, other=0)
    # unselected rank q sits at K + 4 k_i + (q - k_i) in the sequence
    grad_row = (seq_start + num_keypoints + 3 * num_selected + ranks).to(tl.int64)
    dest = sample.to(tl.int64) * stride_d_coarse_sample + patch.to(tl.int64) * stride_d_coarse_patch

    cols = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = (cols < dim)[None, :]
    cols = cols[None, :]
    grad = tl.load(grad_ptr + grad_row[:, None] * stride_grad + cols, mask=unselected[:, None] & col_ok, other=0.0)
    tl.store(d_coarse_ptr + dest[:, None] + cols, grad, mask=rank_ok[:, None] & col_ok)  # zero where selected


@triton.jit(do_not_specialize=["num_samples"])  # the batch size changes from call to call
def _compose_bwd_keypoint_kernel(
    grad_ptr, cu_seqlens_ptr, d_keypoint_ptr,
    stride_grad, stride_d_keypoint,
    num_samples, dim,
    BLOCK_SAMPLES: tl.constexpr, BLOCK_D: tl.constexpr,
):
    keypoint = tl.program_id(0)
    d_block = tl.program_id(1)
    cols = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    acc = tl.zeros([BLOCK_SAMPLES, BLOCK_D], dtype=tl.float32)
    for first in range(0, num_samples, BLOCK_SAMPLES):
        samples = first + tl.arange(0, BLOCK_SAMPLES)
        sample_ok = samples < num_samples
        seq_start = tl.load(cu_seqlens_ptr + samples, mask=sample_ok, other=0)
        grad_row = (seq_start + keypoint).to(tl.int64)
        acc += tl.load(grad_ptr + grad_row[:, None] * stride_grad + cols[None, :],
                       mask=sample_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    tl.store(d_keypoint_ptr + keypoint.to(tl.int64) * stride_d_keypoint + cols,
             total.to(d_keypoint_ptr.dtype.element_ty), mask=col_ok)


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompositionConfig:
    """Tile sizes of the composition kernels.

    block_rows:    sequence rows per program (forward) / order ranks per program (coarse backward)
    block_slots:   parent slots per program in the fine backward (4 gradient rows each)
    block_samples: samples summed per loop step in the keypoint backward
    block_d:       channels per program (the grid's third dimension covers D)
    """

    block_rows: int
    block_slots: int
    block_samples: int
    block_d: int
    num_warps: int = 4


def composition_config(dim: int, dtype: torch.dtype, interpreter: bool | None = None) -> CompositionConfig:
    """Default tiles for embedding dim `dim`.

    Compiled (GPU): the op is a gather + add, bound by memory traffic; a program moves a
    4096-element tile per source (2048 for fp32), with block_d a power of two <= 256 that divides
    D when it can (768 -> 256, 384 -> 128, 96 -> 128 with a masked tail). Under the interpreter,
    whose cost is per program, a program takes whole rows and more of them.
    """
    if interpreter is None:
        interpreter = interpreter_enabled()
    if interpreter:
        block_d = triton.next_power_of_2(max(dim, 1))
        return CompositionConfig(block_rows=32, block_slots=16, block_samples=16, block_d=block_d)
    if dim % 256 == 0:
        block_d = 256
    elif dim % 128 == 0:
        block_d = 128
    else:
        block_d = min(256, triton.next_power_of_2(max(dim, 1)))
    elements = 2048 if dtype == torch.float32 else 4096
    block_rows = max(1, min(64, elements // block_d))
    return CompositionConfig(
        block_rows=block_rows,
        block_slots=max(1, block_rows // 4),
        block_samples=max(1, min(32, elements // block_d)),
        block_d=block_d,
        num_warps=4,
    )


# (K, D, R, N_c, S_p, max_seqlen) and the tiles of the calls that passed `_check_compose_args`.
_CHECKED: CheckedSignatures[tuple] = CheckedSignatures("compose_tokens")


def _check_and_configure(keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens, coarse_grid,
                         max_seqlen):
    K, D, R, N_c, S_p, max_seqlen = _check_compose_args(
        keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens, coarse_grid, max_seqlen
    )
    check_kernel_device(keypoint_tokens.device, "compose_tokens", keypoint_tokens.dtype)
    if R > 2**31 - 1:
        raise ValueError(f"too many samples ({R}) for one launch")
    return K, D, R, N_c, S_p, max_seqlen, composition_config(D, keypoint_tokens.dtype)


def _check_compose_args_once(*args):
    coarse_grid, max_seqlen = args[7:]
    try:  # max_seqlen's type too (True == 1); a list coarse_grid as a tuple
        signature = tuple((t.shape, t.dtype, t.device) for t in args[:7]) + (
            type(max_seqlen), max_seqlen, type(coarse_grid), tuple(coarse_grid))
    except (AttributeError, TypeError):  # not tensors, or not a grid: the checks say which
        return _check_and_configure(*args)
    return _CHECKED.get(signature, _check_and_configure, *args)


def _channels_contiguous(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(t with unit channel stride, its strides): the kernels index channels with unit stride, rows
    may have any stride. The strides are read once here, as the launch needs them."""
    strides = t.stride()
    if strides[-1] != 1 and t.shape[-1] > 1:
        t = t.contiguous()
        strides = t.stride()
    return t, strides


def _pointer(t: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """An empty tensor's pointer may be null; its loads are all masked off, so any valid pointer does."""
    return t if t.numel() else fallback


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def compose_tokens_forward(
    keypoint_tokens: torch.Tensor,
    fine_embed: torch.Tensor,
    fine_pos: torch.Tensor,
    reuse: torch.Tensor,
    coarse_embed: torch.Tensor,
    order: torch.Tensor,
    cu_seqlens: torch.Tensor,
    coarse_grid: tuple[int, int],
    max_seqlen: int,
    *,
    out: torch.Tensor | None = None,
    config: CompositionConfig | None = None,
) -> torch.Tensor:
    """Launch the forward kernel into `out` (T, D) (allocated when None); no argument checks.

    Every row of `out` belongs to some sequence and is written: the kernel needs no zero fill.
    """
    K, D = keypoint_tokens.shape
    R, N_c = order.shape
    T = R * (K + N_c) + 3 * reuse.shape[0]
    if out is None:
        out = keypoint_tokens.new_empty(T, D)
    else:
        assert out.stride(-1) == 1 or D == 1, "out must have contiguous channels"
    if R == 0 or T == 0 or D == 0:
        return out
    cfg = config or composition_config(D, keypoint_tokens.dtype)
    inputs = map(_channels_contiguous, (keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order))
    (keypoint_tokens, s_keypoint), (fine_embed, s_fine), (fine_pos, s_pos), (reuse, s_reuse), \
        (coarse_embed, s_coarse), (order, s_order) = inputs
    grid = (R, cdiv(max_seqlen, cfg.block_rows), cdiv(D, cfg.block_d))
    assert grid[1] <= _MAX_GRID_YZ and grid[2] <= _MAX_GRID_YZ, f"grid {grid} exceeds the CUDA limits"
    with device_guard(out):
        _compose_fwd_kernel[grid](
            _pointer(keypoint_tokens, out), _pointer(fine_embed, out), fine_pos, _pointer(reuse, out),
            coarse_embed, order, cu_seqlens, out,
            s_keypoint[0], s_fine[0], s_pos[0], s_reuse[0], s_coarse[0], s_coarse[1], s_order[0], out.stride(0),
            K, N_c, D,
            COARSE_W=coarse_grid[1], BLOCK_ROWS=cfg.block_rows, BLOCK_D=cfg.block_d,
            num_warps=cfg.num_warps,
        )
    return out


def compose_tokens_backward(
    grad_out: torch.Tensor,
    order: torch.Tensor,
    cu_seqlens: torch.Tensor,
    coarse_grid: tuple[int, int],
    max_seqlen: int,
    num_keypoints: int,
    *,
    needs_grad: tuple[bool, bool, bool, bool, bool] = (True,) * 5,
    grads: tuple[torch.Tensor | None, ...] | None = None,
    config: CompositionConfig | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Launch the backward kernels; returns the gradients of
    (keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed), None where `needs_grad` is False.

    `grads` may supply output buffers for the gradients of (keypoint_tokens, fine_embed, reuse,
    coarse_embed) (None entries are allocated); every row of each is written. The fine_pos
    gradient is accumulated in a zeroed fp32 (N_f, D) buffer and cast to grad_out's dtype.
    """
    need_keypoint, need_fine_embed, need_fine_pos, need_reuse, need_coarse = needs_grad
    K = num_keypoints
    R, N_c = order.shape
    T, D = grad_out.shape
    S_p = (T - R * (K + N_c)) // 3
    dtype, device = grad_out.dtype, grad_out.device
    given = grads or (None,) * 4
    d_keypoint = d_fine_embed = d_fine_pos = d_reuse = d_coarse = None
    if need_keypoint:
        d_keypoint = given[0] if given[0] is not None else grad_out.new_empty((K, D))
    if need_fine_embed:
        d_fine_embed = given[1] if given[1] is not None else grad_out.new_empty((4 * S_p, D))
    if need_reuse:
        d_reuse = given[2] if given[2] is not None else grad_out.new_empty((S_p, D))
    if need_coarse:
        d_coarse = given[3] if given[3] is not None else grad_out.new_empty((R, N_c, D))
    d_fine_pos_acc = torch.zeros((4 * N_c, D), dtype=torch.float32, device=device) if need_fine_pos else None
    cfg = config or composition_config(D, dtype)
    grad_out, order = (_channels_contiguous(t)[0] for t in (grad_out, order))
    d_blocks = cdiv(D, cfg.block_d) if D else 0
    k_max = max(0, min(N_c, (max_seqlen - K - N_c) // 3))

    with device_guard(grad_out):
        if (need_fine_embed or need_fine_pos or need_reuse) and R and S_p and k_max and d_blocks:
            dummy = grad_out
            _compose_bwd_fine_kernel[(R, cdiv(k_max, cfg.block_slots), d_blocks)](
                grad_out, order, cu_seqlens,
                d_fine_embed if need_fine_embed else dummy,
                d_fine_pos_acc if need_fine_pos else dummy,
                d_reuse if need_reuse else dummy,
                grad_out.stride(0), order.stride(0),
                d_fine_embed.stride(0) if need_fine_embed else 0,
                d_fine_pos_acc.stride(0) if need_fine_pos else 0,
                d_reuse.stride(0) if need_reuse else 0,
                K, N_c, D,
                COARSE_W=coarse_grid[1], BLOCK_SLOTS=cfg.block_slots, BLOCK_D=cfg.block_d,
                FINE_EMBED_GRAD=need_fine_embed, FINE_POS_GRAD=need_fine_pos, REUSE_GRAD=need_reuse,
                num_warps=cfg.num_warps,
            )
        if need_coarse and R and d_blocks:
            _compose_bwd_coarse_kernel[(R, cdiv(N_c, cfg.block_rows), d_blocks)](
                grad_out, order, cu_seqlens, d_coarse,
                grad_out.stride(0), order.stride(0), d_coarse.stride(0), d_coarse.stride(1),
                K, N_c, D,
                BLOCK_ROWS=cfg.block_rows, BLOCK_D=cfg.block_d,
                num_warps=cfg.num_warps,
            )
        if need_keypoint and K and d_blocks:
            _compose_bwd_keypoint_kernel[(K, d_blocks)](
                _pointer(grad_out, d_keypoint), cu_seqlens, d_keypoint,
                grad_out.stride(0), d_keypoint.stride(0),
                R, D,
                BLOCK_SAMPLES=cfg.block_samples, BLOCK_D=cfg.block_d,
                num_warps=cfg.num_warps,
            )
    if need_fine_pos:
        d_fine_pos = d_fine_pos_acc if dtype == torch.float32 else d_fine_pos_acc.to(dtype)
    return d_keypoint, d_fine_embed, d_fine_pos, d_reuse, d_coarse


# ----------------------------------------------------------------------------------------------
# PyTorch ops (kernels.library): sharpose::compose_tokens and its backward
# ----------------------------------------------------------------------------------------------


def _compose_impl(
    keypoint_tokens: Tensor, fine_embed: Tensor, fine_pos: Tensor, reuse: Tensor, coarse_embed: Tensor,
    order: Tensor, cu_seqlens: Tensor, coarse_grid: list[int], max_seqlen: int,
) -> Tensor:
    return compose_tokens_forward(keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens,
                                  coarse_grid, max_seqlen)


def _compose_fake(keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens, coarse_grid,
                  max_seqlen):
    (K, D), (R, N_c) = keypoint_tokens.shape, order.shape
    return keypoint_tokens.new_empty((R * (K + N_c) + 3 * reuse.shape[0], D))


def _compose_backward_impl(
    grad_out: Tensor, order: Tensor, cu_seqlens: Tensor, coarse_grid: list[int], max_seqlen: int,
    num_keypoints: int, needs_grad: list[bool],
) -> list[Tensor]:
    """The gradients of the token inputs that need one, in argument order."""
    grads = compose_tokens_backward(grad_out, order, cu_seqlens, coarse_grid, max_seqlen, num_keypoints,
                                    needs_grad=tuple(needs_grad))
    return [g for g in grads if g is not None]


def _compose_backward_fake(grad_out, order, cu_seqlens, coarse_grid, max_seqlen, num_keypoints, needs_grad):
    (T, D), (R, N_c), K = grad_out.shape, order.shape, num_keypoints
    S_p = (T - R * (K + N_c)) // 3
    shapes = ((K, D), (4 * S_p, D), (4 * N_c, D), (S_p, D), (R, N_c, D))
    return [grad_out.new_empty(shape) for shape, need in zip(shapes, needs_grad) if need]


_compose_backward_op = KernelOp("compose_tokens_backward", _compose_backward_impl, _compose_backward_fake)


def _setup_context(ctx, inputs, output) -> None:
    keypoint_tokens, _, _, _, _, order, cu_seqlens, coarse_grid, max_seqlen = inputs
    ctx.save_for_backward(order, cu_seqlens)
    ctx.coarse_grid = coarse_grid
    ctx.max_seqlen = max_seqlen
    ctx.num_keypoints = keypoint_tokens.shape[0]


def _backward(ctx, grad_out):
    needs = [bool(n) for n in ctx.needs_input_grad[:5]]
    grads = [None] * 9
    if any(needs):
        order, cu_seqlens = ctx.saved_tensors
        computed = iter(_compose_backward_op(grad_out, order, cu_seqlens, ctx.coarse_grid, ctx.max_seqlen,
                                             ctx.num_keypoints, needs))
        grads[:5] = [next(computed) if need else None for need in needs]
    return tuple(grads)


_compose_op = KernelOp("compose_tokens", _compose_impl, _compose_fake, backward=_backward,
                        setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# The functional entry points
# ----------------------------------------------------------------------------------------------


def compose_tokens(
    keypoint_tokens: torch.Tensor,
    fine_embed: torch.Tensor,
    fine_pos: torch.Tensor,
    reuse: torch.Tensor,
    coarse_embed: torch.Tensor,
    order: torch.Tensor,
    cu_seqlens: torch.Tensor,
    coarse_grid: tuple[int, int],
    max_seqlen: int | None,
) -> torch.Tensor:
    """The packed fine-stage sequences (T, D), T = R (K + N_c) + 3 S_p (Triton); same contract as
    `kernels.reference.compose_tokens` (see this module's docstring).

    keypoint_tokens (K, D); fine_embed (4 S_p, D), sample i's slot s child c at row 4 (o_i + s) + c;
    fine_pos (N_f, D); reuse (S_p, D), row o_i + s; coarse_embed (R, N_c, D); order (R, N_c)
    int32/int64, best first; cu_seqlens (R + 1,) int32 with L_i = K + N_c + 3 k_i; coarse_grid
    (hc, wc); max_seqlen a python int bounding every L_i (sizes the launch grid; None -> K + 4 N_c).
    Shapes, dtypes and devices are checked without reading any tensor on the GPU; a max_seqlen
    below the true longest sequence leaves that sequence's tail unwritten.
    """
    args = (keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens, coarse_grid, max_seqlen)
    tokens = args[:5]
    path = call_path(*tokens)
    if path == TRACED:  # symbolic shapes, which the per-signature memo cannot hold
        K, D, R, N_c, S_p, max_seqlen, config = _check_and_configure(*args)
    else:
        K, D, R, N_c, S_p, max_seqlen, config = _check_compose_args_once(*args)
        if not keypoint_tokens.is_cuda:  # free to check: no device sync
            _check_compose_values(order, cu_seqlens, K, N_c, S_p, max_seqlen)
    if path == LAUNCH:
        return compose_tokens_forward(*tokens, order, cu_seqlens, coarse_grid, max_seqlen, config=config)
    return _compose_op.run(path, *tokens, order, cu_seqlens, list(coarse_grid), max_seqlen)


def compose_tokens_padded(
    keypoint_tokens: torch.Tensor,
    fine_embed: torch.Tensor,
    fine_pos: torch.Tensor,
    reuse: torch.Tensor,
    coarse_embed: torch.Tensor,
    order: torch.Tensor,
    coarse_grid: tuple[int, int],
    k: int,
) -> torch.Tensor:
    """`compose_tokens` with the same k for every sample, as a (R, L, D) batch, L = K + N_c + 3k.

    With equal lengths the packed layout is the padded one, so this is the packed output reshaped
    (cu_seqlens = L * arange(R + 1) is built on the device). fine_embed may be (R, 4k, D) or
    (4 R k, D); reuse (R, k, D) or (R k, D).
    """
    fine_embed, reuse, cu_seqlens, seq_len = _padded_args(
        keypoint_tokens, fine_embed, reuse, coarse_embed, order, coarse_grid, k
    )
    out = compose_tokens(keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens,
                         coarse_grid, seq_len)
    return out.reshape(coarse_embed.shape[0], seq_len, out.shape[-1])
