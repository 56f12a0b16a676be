"""Fused softmax attention with the keypoint-attention score (Triton), forward and backward.

One file, Liger-Kernel style: the Triton kernels, the launchers, their registration as PyTorch
ops (`torch.ops.sharpose.attention`, `attention_with_score`, `attention_backward`, see
kernels/library.py) and the functional entry points `attention` and `attention_with_score`,
whose signatures are those of `kernels.reference` (the oracles the tests compare against).

Forward (FlashAttention-style, the N x N matrix never exists in memory)
    Each program owns BLOCK_M query rows of one (sequence, head) and streams the keys and
    values through in BLOCK_N-column tiles, keeping a running row max `m_i`, a running row sum
    `l_i` of exp(s - m_i) and an un-normalised output accumulator (the online softmax).
    Everything runs in the log2 domain: the logits are scaled by `scale * log2(e)` once so that
    `exp2` can be used. The row's log-sum-exp (log2 domain, `m_i + log2(l_i)`) is stored for the
    backward; a call without gradients sets `store_lse = 0` and allocates none (`lse_placeholder`).

Keypoint-attention score (SHaRPose Eq. 6-7, one layer's term; `attention_with_score`)
    The score needs the *normalised* probabilities, which are only known once the whole row has
    been seen. Up to ONE_TILE_MAX_KEYS keys (the coarse stage: N = 66 and 126) the forward takes
    all keys as one tile, so the row max and sum are final while the probabilities are still in
    registers: the query blocks overlapping `score_rows` sum them over those rows, for the key
    columns `score_cols`, at the cost of one multiply and one masked column sum per element (no
    extra product, no extra exponential). With more keys, those query blocks run a second pass
    over the score columns after the main loop, recomputing the logits and normalising them with
    the final (m_i, l_i). Either way each program stores its weighted column sums into its own
    slot of the (B, H, slots, columns) term that the call returns (the contract is
    `kernels.reference.attention_with_score`'s), without atomics and without a reduction on the
    host: the caller sums the terms of all its layers once, in one fixed order, so identical inputs
    give bitwise-identical scores.

Backward (FlashAttention-2)
    1. `_attn_bwd_preprocess`: delta_i = sum_d dO_id * O_id (fp32).
    2. `_attn_bwd_dkdv`: one program per BLOCK_N key rows; loops over all query blocks,
       rebuilds P^T from the saved log-sum-exp and accumulates dV += P^T dO and
       dK += dS^T Q with dS = P * (dP - delta), dP = dO V^T. No atomics.
    3. `_attn_bwd_dq`: one program per BLOCK_M query rows; loops over the key blocks and
       accumulates dQ += dS K. No atomics, so the backward is deterministic.

Layouts
    q, k, v are (B, H, N, d) with arbitrary strides (e.g. views of a fused qkv projection);
    nothing is copied, the strides go to the kernels. The output (and dq, dk, dv) are allocated
    token-major: (B, H, N, d) tensors laid out as a contiguous (B, N, H, d) buffer, so that the
    caller's `out.transpose(1, 2).reshape(B, N, H * d)` is free.

Variable-length sequences
    The per-tile work lives in `@triton.jit` helpers that take base pointers already offset to
    one (sequence, head), the sequence lengths and the element strides (`attn_fwd_tile`,
    `attn_bwd_delta_tile`, `attn_bwd_dkdv_tile`, `attn_bwd_dq_tile`). The batched kernels
    here only turn (program id, batch, head) into those base pointers (`start = 0`,
    `length = N`); the packed (T, H, d) kernels of kernels/varlen_fused_attention.py compute
    `start = cu_seqlens[b]`, `length = cu_seqlens[b + 1] - start` instead, return early for
    blocks past `length`, and reuse the helpers and `attention_config` unchanged.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from torch import Tensor

from kernels.device import KERNEL_DTYPES, CheckedSignatures, cdiv, check_kernel_device, device_guard
from kernels.library import LAUNCH, TRACED, KernelOp, call_path
from kernels.reference import _check_score_args, score_slots

__all__ = [
    "attention",
    "attention_with_score",
    "AttentionConfig",
    "KernelLaunch",
    "attention_config",
    "attention_forward",
    "attention_backward",
    "LOG2E",
    "lse_placeholder",
    # shared with the packed (cu_seqlens) varlen kernels: the per-(sequence, head) tile bodies
    "attn_fwd_tile",
    "attn_bwd_delta_tile",
    "attn_bwd_dkdv_tile",
    "attn_bwd_dq_tile",
]

LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
MAX_HEAD_DIM = 256
_MAX_GRID_YZ = 65535  # CUDA limit of grid dimensions 1 and 2 (heads, batch)

# Sequence lengths and score bounds change from call to call: do not specialise on them
# (no recompilation for every N; no separate variants for N % 16 == 0 or N == 1).
_RUNTIME_INTS = [
    "seq_len_q", "seq_len_k", "score_row_start", "score_row_end", "score_col_start", "score_col_end",
    "num_score_slots", "store_lse",
]


# ----------------------------------------------------------------------------------------------
# Tile helpers: one (sequence, head); base pointers already point at its first row.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _score_columns(
    score_base, stride_score_c, p, row_scale, offs_m, offs_n,
    score_row_start, score_row_end, score_col_start, score_col_end,
):
    """Store sum over the score rows of p * row_scale (score_scale / the row sum: the weighted
    normalised probabilities), for the score columns among `offs_n`.

    Lanes outside the score rows and columns are dropped with `tl.where`, never by multiplying
    by 0: `p` may be inf there (a masked key or query loads as 0, a logit of 0 against a row
    maximum far below 0), and inf * 0 = NaN.
    Each column of one (sample, head, query block) is stored by exactly one program, without
    atomics, so a fixed-order sum over heads and blocks is reproducible bit for bit.
    """
    row_in = (offs_m >= score_row_start) & (offs_m < score_row_end)
    col_in = (offs_n >= score_col_start) & (offs_n < score_col_end)
    probs = tl.where(row_in[:, None] & col_in[None, :], p * row_scale[:, None], 0.0)
    tl.store(score_base + (offs_n - score_col_start) * stride_score_c, tl.sum(probs, axis=0), mask=col_in)


@triton.jit
def attn_fwd_tile(
    q_base, k_base, v_base, o_base, lse_base, score_base,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_on, stride_od,
    stride_lse_n, stride_score_c,
    start_m, seq_len_q, seq_len_k,
    qk_scale,  # softmax scale * log2(e)
    store_lse,  # 1, or 0 when nothing needs the log-sum-exp (no backward follows): lse_base may be a placeholder
    score_scale,  # the layer's score weight / H
    score_row_start, score_row_end, score_col_start, score_col_end,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SCORE: tl.constexpr, ONE_KEY_TILE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n_tile = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_valid = offs_m < seq_len_q
    d_valid = offs_d < HEAD_DIM
    scored_block = (start_m < score_row_end) & (start_m + BLOCK_M > score_row_start)

    q = tl.load(
        q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
        mask=row_valid[:, None] & d_valid[None, :], other=0.0,
    )

    if ONE_KEY_TILE:
        # Every key fits one BLOCK_N tile (seq_len_k <= BLOCK_N): the row max and sum are final
        # as soon as the tile's logits are in registers, so there is no rescaling, and the
        # score reuses these probabilities: no second product, no second exponential.
        col_valid = offs_n_tile < seq_len_k
        k_t = tl.load(
            k_base + offs_n_tile[None, :] * stride_kn + offs_d[:, None] * stride_kd,
            mask=col_valid[None, :] & d_valid[:, None], other=0.0,
        )
        s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(col_valid[None, :], s, float("-inf"))
        m_i = tl.max(s, axis=1)
        p = tl.exp2(s - m_i[:, None])
        l_i = tl.sum(p, axis=1)
        v = tl.load(
            v_base + offs_n_tile[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            mask=col_valid[:, None] & d_valid[None, :], other=0.0,
        )
        acc = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        if HAS_SCORE:
            if scored_block:
                _score_columns(
                    score_base, stride_score_c, p, score_scale / l_i, offs_m, offs_n_tile,
                    score_row_start, score_row_end, score_col_start, score_col_end,
                )
    else:
        # Online softmax state (log2 domain): running max, running sum of exp2(s - m_i), and the
        # output accumulator scaled by the same exp2(-m_i).
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for start_n in range(0, seq_len_k, BLOCK_N):
            offs_n = start_n + offs_n_tile
            col_valid = offs_n < seq_len_k
            k_t = tl.load(  # K^T tile, (BLOCK_D, BLOCK_N)
                k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                mask=col_valid[None, :] & d_valid[:, None], other=0.0,
            )
            s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
            s = tl.where(col_valid[None, :], s, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)

            v = tl.load(
                v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=col_valid[:, None] & d_valid[None, :], other=0.0,
            )
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
            m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(
        o_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
        acc.to(o_base.dtype.element_ty),
        mask=row_valid[:, None] & d_valid[None, :],
    )
    # store_lse is 0 or 1: no row is stored, or every valid one
    tl.store(lse_base + offs_m * stride_lse_n, m_i + tl.log2(l_i), mask=offs_m < seq_len_q * store_lse)

    if HAS_SCORE and not ONE_KEY_TILE:
        # Several key tiles: the probabilities are only normalisable once the whole row has been
        # seen, so the query blocks holding keypoint rows recompute the score columns' logits.
        if scored_block:
            row_scale = score_scale / l_i
            # Reload the query tile rather than keeping it live across the main loop (fp32 spills).
            q = tl.load(
                q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_valid[:, None] & d_valid[None, :], other=0.0,
            )
            for start_n in range(score_col_start, score_col_end, BLOCK_N):
                offs_n = start_n + offs_n_tile
                col_in = offs_n < score_col_end
                k_t = tl.load(
                    k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=col_in[None, :] & d_valid[:, None], other=0.0,
                )
                s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
                _score_columns(
                    score_base, stride_score_c, tl.exp2(s - m_i[:, None]), row_scale, offs_m, offs_n,
                    score_row_start, score_row_end, score_col_start, score_col_end,
                )


@triton.jit
def attn_bwd_delta_tile(
    o_base, do_base, delta_base,
    stride_on, stride_od, stride_don, stride_dod, stride_delta_n,
    start_m, seq_len_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_valid = offs_m < seq_len_q
    mask = row_valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(o_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(do_base + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(delta_base + offs_m * stride_delta_n, delta, mask=row_valid)


@triton.jit
def attn_bwd_dkdv_tile(
    q_base, k_base, v_base, do_base, lse_base, delta_base, dk_base, dv_base,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_don, stride_dod,
    stride_lse_n, stride_dkn, stride_dkd, stride_dvn, stride_dvd,
    start_n, seq_len_q, seq_len_k,
    sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m_tile = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_valid = offs_n < seq_len_k
    d_valid = offs_d < HEAD_DIM
    kv_mask = col_valid[:, None] & d_valid[None, :]

    k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for start_m in range(0, seq_len_q, BLOCK_M):
        offs_m = start_m + offs_m_tile
        row_valid = offs_m < seq_len_q
        q_mask = row_valid[:, None] & d_valid[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
        lse = tl.load(lse_base + offs_m * stride_lse_n, mask=row_valid, other=0.0)
        delta = tl.load(delta_base + offs_m * stride_lse_n, mask=row_valid, other=0.0)

        # P^T (BLOCK_N, BLOCK_M) straight from the saved log-sum-exp; padded query rows give 0.
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.exp2(s_t - lse[None, :])
        p_t = tl.where(row_valid[None, :], p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)

        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)

    dk = dk * sm_scale
    tl.store(
        dk_base + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
        dk.to(dk_base.dtype.element_ty), mask=kv_mask,
    )
    tl.store(
        dv_base + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
        dv.to(dv_base.dtype.element_ty), mask=kv_mask,
    )


@triton.jit
def attn_bwd_dq_tile(
    q_base, k_base, v_base, do_base, lse_base, delta_base, dq_base,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_don, stride_dod,
    stride_lse_n, stride_dqn, stride_dqd,
    start_m, seq_len_q, seq_len_k,
    sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n_tile = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_valid = offs_m < seq_len_q
    d_valid = offs_d < HEAD_DIM
    q_mask = row_valid[:, None] & d_valid[None, :]

    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
    do = tl.load(do_base + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
    lse = tl.load(lse_base + offs_m * stride_lse_n, mask=row_valid, other=0.0)
    delta = tl.load(delta_base + offs_m * stride_lse_n, mask=row_valid, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for start_n in range(0, seq_len_k, BLOCK_N):
        offs_n = start_n + offs_n_tile
        col_valid = offs_n < seq_len_k
        kv_t_mask = col_valid[None, :] & d_valid[:, None]
        k_t = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=kv_t_mask, other=0.0)
        v_t = tl.load(v_base + offs_n[None, :] * stride_vn + offs_d[:, None] * stride_vd, mask=kv_t_mask, other=0.0)

        s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(col_valid[None, :], p, 0.0)
        dp = tl.dot(do, v_t, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq, input_precision=DOT_PRECISION)

    dq = dq * sm_scale
    tl.store(
        dq_base + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
        dq.to(dq_base.dtype.element_ty), mask=q_mask,
    )


# ----------------------------------------------------------------------------------------------
# Batched (B, H, N, d) kernels. Grid: (query or key blocks, H, B); program (i, h, b).
# ----------------------------------------------------------------------------------------------


@triton.jit
def _zero_score_slots(
    score_base, stride_score_slot, stride_score_c, first_slot, num_slots, num_cols, BLOCK_N: tl.constexpr,
):
    """Zero the slots first_slot .. num_slots - 1 of one (sample, head) of the score term."""
    offs = tl.arange(0, BLOCK_N)
    for start in range(first_slot * num_cols, num_slots * num_cols, BLOCK_N):
        index = start + offs  # slot-major over the slots' columns
        tl.store(score_base + (index // num_cols) * stride_score_slot + (index % num_cols) * stride_score_c,
                 tl.zeros([BLOCK_N], dtype=tl.float32), mask=index < num_slots * num_cols)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_fwd(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, score_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_lse_b, stride_lse_h,
    stride_score_b, stride_score_h, stride_score_slot, stride_score_c,
    seq_len_q, seq_len_k, qk_scale, store_lse, score_scale,
    score_row_start, score_row_end, score_col_start, score_col_end, num_score_slots,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SCORE: tl.constexpr, ONE_KEY_TILE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    start_m = block * BLOCK_M
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)  # 64-bit offsets: B * N * H * d may exceed 2**31
    # The score term (B, H, num_score_slots, columns): the query blocks first_block .. last_block
    # overlap the score rows, and block i stores its column sums into slot i - first_block; the
    # first of them also zeroes the slots no block owns (BLOCK_M >= 16 rows leaves at most
    # num_score_slots blocks, kernels.reference.score_slots).
    score_head = score_ptr + batch * stride_score_b + head * stride_score_h
    first_block = score_row_start // BLOCK_M
    attn_fwd_tile(
        q_ptr + batch * stride_qb + head * stride_qh,
        k_ptr + batch * stride_kb + head * stride_kh,
        v_ptr + batch * stride_vb + head * stride_vh,
        out_ptr + batch * stride_ob + head * stride_oh,
        lse_ptr + batch * stride_lse_b + head * stride_lse_h,
        score_head + (block - first_block) * stride_score_slot,
        stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_on, stride_od,
        1, stride_score_c,
        start_m, seq_len_q, seq_len_k, qk_scale, store_lse, score_scale,
        score_row_start, score_row_end, score_col_start, score_col_end,
        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_SCORE, ONE_KEY_TILE, DOT_PRECISION,
    )
    # after the tile: zeroing first makes sm_80's fp32 tf32 d 32 variant spill 8 bytes
    if HAS_SCORE:
        tl.static_assert(BLOCK_M >= 16)
        if block == first_block:
            _zero_score_slots(
                score_head, stride_score_slot, stride_score_c,
                (score_row_end - 1) // BLOCK_M - first_block + 1, num_score_slots,
                score_col_end - score_col_start, BLOCK_N,
            )


@triton.jit(do_not_specialize=["seq_len_q"])
def _attn_bwd_preprocess(
    out_ptr, d_out_ptr, delta_ptr,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_delta_b, stride_delta_h,
    seq_len_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    attn_bwd_delta_tile(
        out_ptr + batch * stride_ob + head * stride_oh,
        d_out_ptr + batch * stride_dob + head * stride_doh,
        delta_ptr + batch * stride_delta_b + head * stride_delta_h,
        stride_on, stride_od, stride_don, stride_dod, 1,
        start_m, seq_len_q,
        HEAD_DIM, BLOCK_D, BLOCK_M,
    )


@triton.jit(do_not_specialize=["seq_len_q", "seq_len_k"])
def _attn_bwd_dkdv(
    q_ptr, k_ptr, v_ptr, d_out_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lse_b, stride_lse_h,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    seq_len_q, seq_len_k, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    lse_offset = batch * stride_lse_b + head * stride_lse_h  # lse and delta share one layout
    attn_bwd_dkdv_tile(
        q_ptr + batch * stride_qb + head * stride_qh,
        k_ptr + batch * stride_kb + head * stride_kh,
        v_ptr + batch * stride_vb + head * stride_vh,
        d_out_ptr + batch * stride_dob + head * stride_doh,
        lse_ptr + lse_offset,
        delta_ptr + lse_offset,
        dk_ptr + batch * stride_dkb + head * stride_dkh,
        dv_ptr + batch * stride_dvb + head * stride_dvh,
        stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_don, stride_dod,
        1, stride_dkn, stride_dkd, stride_dvn, stride_dvd,
        start_n, seq_len_q, seq_len_k, sm_scale, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION,
    )


@triton.jit(do_not_specialize=["seq_len_q", "seq_len_k"])
def _attn_bwd_dq(
    q_ptr, k_ptr, v_ptr, d_out_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lse_b, stride_lse_h,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    seq_len_q, seq_len_k, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    lse_offset = batch * stride_lse_b + head * stride_lse_h
    attn_bwd_dq_tile(
        q_ptr + batch * stride_qb + head * stride_qh,
        k_ptr + batch * stride_kb + head * stride_kh,
        v_ptr + batch * stride_vb + head * stride_vh,
        d_out_ptr + batch * stride_dob + head * stride_doh,
        lse_ptr + lse_offset,
        delta_ptr + lse_offset,
        dq_ptr + batch * stride_dqb + head * stride_dqh,
        stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_don, stride_dod,
        1, stride_dqn, stride_dqd,
        start_m, seq_len_q, seq_len_k, sm_scale, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION,
    )


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelLaunch:
    """Tile sizes and launch options of one kernel: BLOCK_M query rows x BLOCK_N key columns."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class AttentionConfig:
    """Launch configuration of the forward and the three backward kernels.

    fwd:  a program owns block_m query rows and steps through the keys block_n at a time; when
          every key fits one block_n tile the forward takes its one-tile path (no rescaling, the
          score fused into it).
    dkdv: a program owns block_n key rows and steps through the queries block_m at a time.
    dq:   a program owns block_m query rows and steps through the keys block_n at a time.
    delta (backward preprocess): block_m rows per program (block_n unused).
    block_d: the head dim padded to a power of two >= 16 (tl.dot needs K >= 16).
    dot_precision: `input_precision` of every tl.dot ("ieee", or "tf32" for fp32 on tensor
    cores); 16-bit inputs always use tensor cores whatever it says.
    """

    fwd: KernelLaunch
    dkdv: KernelLaunch
    dq: KernelLaunch
    block_d: int
    delta: KernelLaunch = KernelLaunch(64, 0, 4, 1)
    dot_precision: str = "ieee"


# The widest key tile the forward keeps whole: up to it a query block sees all keys at once.
ONE_TILE_MAX_KEYS = 128
_LENGTH_GRANULE = 16  # every tile choice below changes only at multiples of 16 keys


def _fp32_dot_precision() -> str:
    """tl.dot's input precision for fp32, following PyTorch's own matmul setting: "highest" keeps
    IEEE fp32; "high" and "medium" let cuBLAS use TF32 tensor cores (torch.backends.cuda.matmul.
    allow_tf32), and so do these kernels, with single-pass "tf32" as cuBLAS does (not "tf32x3")."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def attention_config(
    head_dim: int, dtype: torch.dtype, interpreter: bool = False, seq_len: int | None = None,
    fp32_precision: str | None = None,
) -> AttentionConfig:
    """The launch configuration for a head dim, dtype and key length on a CUDA device (or under the
    interpreter); `seq_len=None` means a long sequence. Cached per length bucket (lengths rounded
    up to a multiple of 16, where the choices below change): cheap to call on every launch.

    Forward, up to ONE_TILE_MAX_KEYS keys (the coarse stage, N = 66 / 126, and the fine stage of
    SHaRPose-B at 256x192, N = 125): one key tile as wide as the keys rounded up to a power of two,
    one stage (no loop to pipeline), where that tile fits the registers (`_ONE_TILE_AREA`; IEEE
    fp32 only for short sequences). Longer: 64-key tiles with 3 stages (32-key, 1 stage for fp32),
    2 warps for query blocks of at most 32 rows with tensor-core dots.
    Either way the query block (64, 32 or 16 rows; at most 32 for fp32 and
    for a one-tile fp32 forward) is the one that pads the fewest rows, ties going to the larger
    block (fewer programs). The backward's inner loop tiles are narrower than the tile a program
    owns (as in FlashAttention-2's backward). Every configuration compiles for sm_80 and sm_90
    without register spills, with registers for at least 2 CTAs per SM (tests/test_aot.py,
    bench/kernel_resources.py). fp32's dot precision follows torch.get_float32_matmul_precision()
    unless `fp32_precision` says.

    With `interpreter=True` (CPU tensors under TRITON_INTERPRET=1) the forward keeps its one-tile
    configurations, so the interpreter runs (and counts) the GPU's work at those lengths, and
    everything else uses 64 x 64 tiles: the interpreter's cost is per tile operation.
    """
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    if dtype != torch.float32:
        precision = "ieee"
    else:  # "ieee" or "tf32"; None: as torch's matmuls
        precision = fp32_precision or _fp32_dot_precision()
    bucket = None if seq_len is None else max(1, cdiv(int(seq_len), _LENGTH_GRANULE)) * _LENGTH_GRANULE
    return _attention_config(head_dim, dtype, interpreter, bucket, precision)


@functools.lru_cache(maxsize=None)
def _attention_config(
    head_dim: int, dtype: torch.dtype, interpreter: bool, seq_bucket: int | None, precision: str
) -> AttentionConfig:
    block_d = max(16, triton.next_power_of_2(head_dim))
    L = KernelLaunch
    fp32 = dtype == torch.float32
    if interpreter:
        fwd, dkdv, dq = L(64, 64), L(64, 64), L(64, 64)
    elif not fp32:
        if block_d <= 64:
            fwd, dkdv, dq = L(64, 64, 4, 3), L(32, 64, 4, 2), L(64, 32, 4, 2)
        elif block_d <= 128:
            fwd, dkdv, dq = L(64, 32, 4, 2), L(32, 64, 4, 1), L(64, 32, 4, 2)
        else:
            fwd, dkdv, dq = L(64, 32, 8, 1), L(32, 32, 8, 1), L(32, 32, 8, 1)
    else:
        if block_d <= 32:
            fwd, dkdv, dq = L(32, 32, 4, 1), L(32, 32, 4, 1), L(32, 32, 4, 1)
        elif block_d <= 64:
            fwd, dkdv, dq = L(32, 32, 4, 1), L(16, 32, 4, 1), L(32, 16, 4, 1)
        elif block_d <= 128:
            fwd, dkdv, dq = L(32, 32, 8, 1), L(16, 16, 4, 1), L(16, 16, 4, 1)
        else:
            fwd, dkdv, dq = L(16, 16, 8, 1), L(16, 16, 4, 1), L(16, 16, 4, 1)
    if seq_bucket is not None:
        fwd = _forward_for_length(seq_bucket, block_d, fp32, precision, fwd, keep_long=interpreter)
    return AttentionConfig(fwd, dkdv, dq, block_d, dot_precision=precision)


def _fewest_padded_rows(length: int, blocks: tuple[int, ...]) -> int:
    return min(blocks, key=lambda m: (cdiv(length, m) * m, -m))


# Largest head dim x key tile of a one-tile forward that compiles without spills (sm_80, sm_90;
# kernels.aot): IEEE fp32 dots run on CUDA cores with their operands in registers.
_ONE_TILE_AREA = {"16-bit": 64 * 128, "tf32": 32 * 128, "ieee": 32 * 32}


def _forward_for_length(
    length: int, block_d: int, fp32: bool, precision: str, default: KernelLaunch, keep_long: bool
) -> KernelLaunch:
    """The forward's tiles for `length` keys (and as many queries); `default` where no rule applies."""
    rows = (32, 16) if fp32 else (64, 32, 16)
    block_n = max(16, triton.next_power_of_2(length))
    if length <= ONE_TILE_MAX_KEYS and block_d * block_n <= _ONE_TILE_AREA[precision if fp32 else "16-bit"]:
        return KernelLaunch(_fewest_padded_rows(length, rows), block_n, 4, 1)
    if keep_long or block_d > 64:
        return default
    # 16-bit: 3 stages (with 2, 32 x 64 tiles at d 32 spill on sm_80)
    block_n, stages = (32, 1) if fp32 else (64, 3)
    if fp32 and length <= block_n:
        # the launcher takes the one-tile path here too; with 32 rows its IEEE score variant spills
        # at d 64, so 16 rows
        rows = (16,)
    block_m = _fewest_padded_rows(length, rows[:2])
    # Tensor-core dots on 16- or 32-row blocks: 4 warps leave each a sliver of rows, and triton 3.8
    # spills the score variant on sm_90 there (8 bytes); 2 warps hold them without spills (triton 3.8
    # and 3.9). IEEE fp32 dots need the registers of 4 warps.
    tensor_cores = not fp32 or precision != "ieee"
    return KernelLaunch(block_m, block_n, 2 if tensor_cores and block_m <= 32 else default.num_warps, stages)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, H, N, d) tensors, got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, H, _, d = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H) or k.shape[3] != d or v.shape[3] != d:
        raise ValueError(
            f"q, k, v must agree on batch, heads and head dim, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same sequence length, got {k.shape[2]} and {v.shape[2]}")
    if k.shape[2] == 0 and q.shape[2] > 0:
        raise ValueError("attention over an empty key sequence is undefined")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {MAX_HEAD_DIM}], got {d}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"unsupported dtype {q.dtype}; expected float32, float16 or bfloat16")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if H > _MAX_GRID_YZ or B > _MAX_GRID_YZ:
        raise ValueError(f"at most {_MAX_GRID_YZ} heads and {_MAX_GRID_YZ} samples per call, got H={H}, B={B}")


def _check_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score_rows: tuple[int, int] | None,
    score_cols: tuple[int, int] | None,
    op: str,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check the arguments of `op` (`attention` or `attention_with_score`) and that their device
    can run the kernel; return the resolved score ranges."""
    _check_qkv(q, k, v)
    check_kernel_device(q.device, op, q.dtype)
    return _check_score_args(q, k, score_rows, score_cols)


# The resolved score ranges and the launch configuration of the calls that passed `_check_args`.
_CHECKED: dict[str, CheckedSignatures[tuple[tuple[int, int], tuple[int, int], AttentionConfig]]] = {
    op: CheckedSignatures(op) for op in ("attention", "attention_with_score")
}


def _hashable(bounds: tuple[int, int] | None) -> tuple | None:
    return bounds if bounds is None or type(bounds) is tuple else tuple(bounds)


def _check_and_configure(q, k, v, score_rows, score_cols, op):
    rows, cols = _check_args(q, k, v, score_rows, score_cols, op)
    return rows, cols, attention_config(q.shape[3], q.dtype, interpreter=not q.is_cuda, seq_len=k.shape[2])


def _check_args_once(q, k, v, score_rows, score_cols, op):
    # the fp32 dot precision follows a global PyTorch setting that may change between calls
    signature = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
                 torch.get_float32_matmul_precision(), _hashable(score_rows), _hashable(score_cols))
    return _CHECKED[op].get(signature, _check_and_configure, q, k, v, score_rows, score_cols, op)


_LSE_PLACEHOLDERS: dict[torch.device, torch.Tensor] = {}


def lse_placeholder(like: torch.Tensor) -> torch.Tensor:
    """A float32 tensor on `like`'s device to pass as the forward kernels' log-sum-exp when they do
    not store it (store_lse = 0): one per device, never read or written."""
    device = like.device
    placeholder = _LSE_PLACEHOLDERS.get(device)
    if placeholder is None:
        placeholder = _LSE_PLACEHOLDERS[device] = torch.empty(1, dtype=torch.float32, device=device)
    return placeholder


def _token_major(B: int, H: int, N: int, d: int, like: torch.Tensor) -> torch.Tensor:
    """A (B, H, N, d) tensor laid out as a contiguous (B, N, H, d) buffer."""
    return like.new_empty_strided((B, H, N, d), (N * H * d, d, H * d, 1))


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    score_rows: tuple[int, int] | None = None,
    score_cols: tuple[int, int] = (0, 0),
    score_weight: float = 1.0,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    term: torch.Tensor | None = None,
    store_lse: bool = True,
    config: AttentionConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the forward kernel; returns (out, lse, score term). No argument checks beyond shapes.

    With `score_rows` (resolved (start, end) ranges, as `score_cols`) the kernel also writes the
    score term of `kernels.reference.attention_with_score` (None without). `out` (B, H, N, d),
    `lse` (B, H, N) float32 and `term` may be given (any strides, lse with unit stride along N);
    `config` overrides the block sizes. Without `store_lse` (no backward will follow) the log-sum-exp
    is neither allocated nor stored, and None is returned for it.
    """
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    cfg = config or attention_config(d, q.dtype, interpreter=q.device.type != "cuda", seq_len=Nk)
    if out is None:
        out = _token_major(B, H, Nq, d, q)
    if not store_lse:
        lse = None
    elif lse is None:
        lse = q.new_empty(B, H, Nq, dtype=torch.float32)
    else:
        assert lse.stride(2) == 1 or Nq <= 1, "lse must have unit stride along the sequence"
    (r0, r1), (c0, c1) = score_rows or (0, 0), score_cols
    has_score = r1 > r0 and c1 > c0
    if score_rows is None:
        term = None
    else:
        if term is None:  # (sizes as arguments: a tuple of sizes costs 0.6 us more)
            term = q.new_empty(B, H, score_slots(r1 - r0), c1 - c0, dtype=torch.float32)
        if not has_score:  # no rows or no columns: a term of zeros; otherwise the kernel stores every element
            term.zero_()
    if B == 0 or H == 0 or Nq == 0:
        return out, lse, term
    # without the log-sum-exp: a placeholder, with the strides a real one would have (the same compiled
    # variant); without the score: any float32 pointer. Neither is dereferenced then.
    lse_ptr, lse_strides = (lse, lse.stride()[:2]) if store_lse else (lse_placeholder(q), (H * Nq, Nq))
    score_ptr, score_strides, num_slots = (term, term.stride(), term.shape[2]) if has_score else (lse_ptr, (0,) * 4, 0)
    grid = (cdiv(Nq, cfg.fwd.block_m), H, B)
    with device_guard(q):
        _attn_fwd[grid](
            q, k, v, out, lse_ptr, score_ptr,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            *lse_strides,
            *score_strides,
            Nq, Nk, scale * LOG2E, int(store_lse), float(score_weight) / H,
            r0, r1, c0, c1, num_slots,
            HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_M=cfg.fwd.block_m, BLOCK_N=cfg.fwd.block_n,
            HAS_SCORE=has_score, ONE_KEY_TILE=Nk <= cfg.fwd.block_n, DOT_PRECISION=cfg.dot_precision,
            num_warps=cfg.fwd.num_warps, num_stages=cfg.fwd.num_stages,
        )
    return out, lse, term


def attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    *,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels; returns (dq, dk, dv), token-major like the output."""
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    cfg = config or attention_config(d, q.dtype, interpreter=q.device.type != "cuda")
    dq = _token_major(B, H, Nq, d, q) if dq is None else dq
    dk = _token_major(B, H, Nk, d, k) if dk is None else dk
    dv = _token_major(B, H, Nk, d, v) if dv is None else dv
    if B == 0 or H == 0:
        return dq, dk, dv
    if Nq == 0:  # no queries: nothing flows back into the keys and values
        dk.zero_()
        dv.zero_()
        return dq, dk, dv
    delta = torch.empty_like(lse)
    with device_guard(q):
        _attn_bwd_preprocess[(cdiv(Nq, cfg.delta.block_m), H, B)](
            out, dout, delta,
            *out.stride(), *dout.stride(), delta.stride(0), delta.stride(1),
            Nq,
            HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_M=cfg.delta.block_m,
            num_warps=cfg.delta.num_warps, num_stages=cfg.delta.num_stages,
        )
        _attn_bwd_dkdv[(cdiv(Nk, cfg.dkdv.block_n), H, B)](
            q, k, v, dout, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(),
            lse.stride(0), lse.stride(1), *dk.stride(), *dv.stride(),
            Nq, Nk, scale, scale * LOG2E,
            HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_M=cfg.dkdv.block_m, BLOCK_N=cfg.dkdv.block_n,
            DOT_PRECISION=cfg.dot_precision,
            num_warps=cfg.dkdv.num_warps, num_stages=cfg.dkdv.num_stages,
        )
        _attn_bwd_dq[(cdiv(Nq, cfg.dq.block_m), H, B)](
            q, k, v, dout, lse, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(),
            lse.stride(0), lse.stride(1), *dq.stride(),
            Nq, Nk, scale, scale * LOG2E,
            HEAD_DIM=d, BLOCK_D=cfg.block_d, BLOCK_M=cfg.dq.block_m, BLOCK_N=cfg.dq.block_n,
            DOT_PRECISION=cfg.dot_precision,
            num_warps=cfg.dq.num_warps, num_stages=cfg.dq.num_stages,
        )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# PyTorch ops (kernels.library): sharpose::attention, sharpose::attention_with_score and the backward
# ----------------------------------------------------------------------------------------------


def _attention_impl(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return attention_forward(q, k, v, scale)[:2]


def _attention_fake(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    B, H, N, d = q.shape
    return _token_major(B, H, N, d, q), q.new_empty((B, H, N), dtype=torch.float32)


def _attention_with_score_impl(
    q: Tensor, k: Tensor, v: Tensor, scale: float,
    row_start: int, row_end: int, col_start: int, col_end: int, score_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return attention_forward(q, k, v, scale, (row_start, row_end), (col_start, col_end), score_weight)


def _attention_with_score_fake(q, k, v, scale, row_start, row_end, col_start, col_end, score_weight):
    B, H = q.shape[:2]
    term = q.new_empty((B, H, score_slots(row_end - row_start), col_end - col_start), dtype=torch.float32)
    return *_attention_fake(q, k, v, scale), term


def _attention_backward_impl(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    return attention_backward(dout, q, k, v, out, lse, scale)


def _attention_backward_fake(dout, q, k, v, out, lse, scale):
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    return _token_major(B, H, Nq, d, q), _token_major(B, H, Nk, d, k), _token_major(B, H, Nk, d, v)


_attention_backward_op = KernelOp("attention_backward", _attention_backward_impl, _attention_backward_fake)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, scale = inputs[:4]
    out, lse = output[:2]
    ctx.mark_non_differentiable(*output[1:])  # the log-sum-exp and the score term carry no gradient
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.num_inputs = len(inputs)


def _backward(ctx, dout, *_):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(dout, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, *(None,) * (ctx.num_inputs - 3)


_attention_op = KernelOp("attention", _attention_impl, _attention_fake,
                          backward=_backward, setup_context=_setup_context)
_attention_with_score_op = KernelOp("attention_with_score", _attention_with_score_impl, _attention_with_score_fake,
                                     backward=_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# The functional entry points
# ----------------------------------------------------------------------------------------------


def _checked(op, q, k, v, path, score_rows=None, score_cols=None):
    """(score rows, score cols, launch configuration or None) of a call of `op`, after its checks."""
    if path == TRACED:  # symbolic shapes, which the per-signature memo cannot hold
        return *_check_args(q, k, v, score_rows, score_cols, op), None
    return _check_args_once(q, k, v, score_rows, score_cols, op)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Softmax attention over (B, H, N, d) tensors (Triton), the contract of `kernels.reference.attention`.

    The result is a (B, H, N, d) tensor laid out as a contiguous (B, N, H, d) buffer:
    `out.transpose(1, 2).reshape(B, N, H * d)` copies nothing.
    """
    path = call_path(q, k, v)
    _, _, config = _checked("attention", q, k, v, path)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if path == LAUNCH:
        return attention_forward(q, k, v, scale, store_lse=False, config=config)[0]
    return _attention_op.run(path, q, k, v, scale)[0]


def attention_with_score(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score_rows: tuple[int, int] | None = None,
    score_cols: tuple[int, int] | None = None,
    *,
    scale: float | None = None,
    score_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention` and one layer's keypoint-attention score term (Triton): (out, term), with the
    contract of `kernels.reference.attention_with_score`. The term's slots are the query blocks
    holding score rows (see `_attn_fwd`); the kernel writes every element, so nothing is reduced
    or added on the host per call."""
    path = call_path(q, k, v)
    rows, cols, config = _checked("attention_with_score", q, k, v, path, score_rows, score_cols)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if path == LAUNCH:
        out, _, term = attention_forward(q, k, v, scale, rows, cols, float(score_weight), store_lse=False,
                                         config=config)
        return out, term
    out, _, term = _attention_with_score_op.run(path, q, k, v, scale, *rows, *cols, float(score_weight))
    return out, term
