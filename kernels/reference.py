"""Plain-PyTorch references of the Triton ops: the oracles for the tests and the CPU path.

Each function has the signature of its Triton counterpart in `kernels`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# The query blocks the score rows of one call can fall in, at the smallest block (16 rows) a kernel uses
SCORE_MIN_BLOCK_ROWS = 16


def score_slots(num_rows: int) -> int:
    """Slots per (sample, head) of a score term over `num_rows` consecutive query rows: the most
    SCORE_MIN_BLOCK_ROWS-row blocks those rows can touch (see `attention_with_score`)."""
    return 1 + -(-max(num_rows - 1, 0) // SCORE_MIN_BLOCK_ROWS)


def _check_score_args(
    q: torch.Tensor,
    k: torch.Tensor,
    score_rows: tuple[int, int] | None,
    score_cols: tuple[int, int] | None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (start, end) score ranges, None meaning all query rows / key columns, checked."""
    rows = (0, q.shape[2]) if score_rows is None else tuple(score_rows)
    cols = (0, k.shape[2]) if score_cols is None else tuple(score_cols)
    if len(rows) != 2 or not (0 <= rows[0] <= rows[1] <= q.shape[2]):
        raise ValueError(f"score_rows={score_rows} must be (start, end) with 0 <= start <= end <= {q.shape[2]} query rows")
    if len(cols) != 2 or not (0 <= cols[0] <= cols[1] <= k.shape[2]):
        raise ValueError(f"score_cols={score_cols} must be (start, end) with 0 <= start <= end <= {k.shape[2]} key columns")
    return rows, cols


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Softmax attention over (B, H, N, d) tensors."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


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
    """`attention`, and one layer's term of the keypoint-attention score (Eq. 6-7): `score_weight`
    times the head-mean of the attention probabilities, summed over the query rows `score_rows`
    and restricted to the key columns `score_cols` (None: all of them). Returns (out, term).

    The term contract (every backend): a float32 (B, H, score_slots(rows), n_cols) tensor of partial
    sums, carrying no gradient, whose sum over dims 1 and 2 is the (B, n_cols) term. How it spreads
    over heads and slots is the backend's own (here: the head's whole sum in slot 0). A caller sums
    the terms of all its layers once, in one fixed order, rather than reducing each layer's.
    """
    (r0, r1), (c0, c1) = _check_score_args(q, k, score_rows, score_cols)
    B, H = q.shape[:2]
    term = q.new_zeros((B, H, score_slots(r1 - r0), c1 - c0), dtype=torch.float32)
    with torch.no_grad():
        # only the keypoint rows' probabilities are needed: softmax over all keys, then the score columns
        scale_ = q.shape[-1] ** -0.5 if scale is None else scale
        probs = ((q[:, :, r0:r1] @ k.transpose(-2, -1)) * scale_).float().softmax(dim=-1)
        # Eq. 7, one layer's term: sum over the keypoint rows; the mean over heads is left to the caller's sum
        term[:, :, 0] = probs[..., c0:c1].sum(dim=2) * (score_weight / H)
    return F.scaled_dot_product_attention(q, k, v, scale=scale), term


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention within each of the packed sequences of (T, H, d) tensors.

    Sequence i holds rows cu_seqlens[i] .. cu_seqlens[i + 1] - 1; `max_seqlen` bounds every length.
    Equal lengths (T == R * max_seqlen) are a plain batch; otherwise the sequences are scattered
    into a (R, H, max_seqlen, d) padded batch and attended with a key mask. Nothing here needs the
    lengths on the host.
    """
    T, H, d = q.shape
    R = cu_seqlens.shape[0] - 1
    if T == R * max_seqlen:  # no length exceeds max_seqlen, so all equal it: a plain batch, no padding
        def batch(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(R, max_seqlen, H, x.shape[-1]).transpose(1, 2)

        out = F.scaled_dot_product_attention(batch(q), batch(k), batch(v), scale=scale)
        return out.transpose(1, 2).reshape(T, H, v.shape[-1])
    starts = cu_seqlens[:-1].long()
    lengths = cu_seqlens[1:].long() - starts
    sequence = torch.repeat_interleave(torch.arange(R, device=q.device), lengths, output_size=T)
    offset = torch.arange(T, device=q.device) - starts[sequence]

    def padded(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(R, max_seqlen, H, x.shape[-1])
        out[sequence, offset] = x
        return out.transpose(1, 2)

    key_valid = torch.arange(max_seqlen, device=q.device) < lengths[:, None]
    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=key_valid[:, None, None, :],
                                         scale=scale)
    return out.transpose(1, 2)[sequence, offset]


# ----------------------------------------------------------------------------------------------
# Sparse token composition of the fine stage
# ----------------------------------------------------------------------------------------------

COMPOSE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_compose_args(
    keypoint_tokens: torch.Tensor,
    fine_embed: torch.Tensor,
    fine_pos: torch.Tensor,
    reuse: torch.Tensor,
    coarse_embed: torch.Tensor,
    order: torch.Tensor,
    cu_seqlens: torch.Tensor,
    coarse_grid: tuple[int, int],
    max_seqlen: int | None,
) -> tuple[int, int, int, int, int, int]:
    """Shape, dtype and device checks of `compose_tokens` that need no host-device sync.

    Returns (K, D, R, N_c, S_p, max_seqlen) with `max_seqlen` resolved (None -> K + 4 N_c, the
    length of a sequence that refines every patch).
    """
    tensors = {
        "keypoint_tokens": keypoint_tokens, "fine_embed": fine_embed, "fine_pos": fine_pos,
        "reuse": reuse, "coarse_embed": coarse_embed, "order": order, "cu_seqlens": cu_seqlens,
    }
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if (not isinstance(coarse_grid, (tuple, list)) or len(coarse_grid) != 2
            or not all(isinstance(n, int) and n > 0 for n in coarse_grid)):
        raise ValueError(f"coarse_grid must be two positive ints (hc, wc), got {coarse_grid!r}")
    hc, wc = coarse_grid
    num_patches = hc * wc
    for name in ("keypoint_tokens", "fine_embed", "fine_pos", "reuse"):
        if tensors[name].dim() != 2:
            raise ValueError(f"{name} must be a 2-D (rows, D) tensor, got shape {tuple(tensors[name].shape)}")
    if coarse_embed.dim() != 3:
        raise ValueError(f"coarse_embed must be a (R, N_c, D) tensor, got shape {tuple(coarse_embed.shape)}")
    K, D = keypoint_tokens.shape
    R = coarse_embed.shape[0]
    for name in ("fine_embed", "fine_pos", "reuse", "coarse_embed"):
        if tensors[name].shape[-1] != D:
            raise ValueError(
                f"{name} has D = {tensors[name].shape[-1]} but keypoint_tokens has D = {D}; "
                "all token inputs must share the embedding dim"
            )
    if coarse_embed.shape[1] != num_patches:
        raise ValueError(
            f"coarse_embed has {coarse_embed.shape[1]} patches per sample but coarse_grid {tuple(coarse_grid)} "
            f"has N_c = {num_patches}"
        )
    if fine_pos.shape[0] != 4 * num_patches:
        raise ValueError(
            f"fine_pos must hold the N_f = 4 * N_c = {4 * num_patches} fine positions of coarse_grid "
            f"{tuple(coarse_grid)}, got {fine_pos.shape[0]} rows"
        )
    if fine_embed.shape[0] % 4:
        raise ValueError(f"fine_embed must hold 4 children per selected patch, got {fine_embed.shape[0]} rows")
    S_p = fine_embed.shape[0] // 4
    if reuse.shape[0] != S_p:
        raise ValueError(
            f"reuse must hold one row per selected patch: fine_embed has {fine_embed.shape[0]} rows "
            f"(= 4 x {S_p} patches) but reuse has {reuse.shape[0]}"
        )
    if S_p > R * num_patches:
        raise ValueError(f"{S_p} selected patches is more than the R * N_c = {R * num_patches} patches there are")
    if tuple(order.shape) != (R, num_patches):
        raise ValueError(f"order must be (R, N_c) = {(R, num_patches)}, got shape {tuple(order.shape)}")
    if order.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"order must be an int64 or int32 tensor, got {order.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] != R + 1:
        raise ValueError(
            f"cu_seqlens must be a 1-D tensor of R + 1 = {R + 1} offsets, got shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32 (FlashAttention varlen convention), got {cu_seqlens.dtype}")
    dtypes = {t.dtype for n, t in tensors.items() if n not in ("order", "cu_seqlens")}
    if len(dtypes) != 1:
        raise ValueError(
            "keypoint_tokens, fine_embed, fine_pos, reuse and coarse_embed must share one dtype, got "
            + ", ".join(f"{n}={t.dtype}" for n, t in tensors.items() if n not in ("order", "cu_seqlens"))
        )
    if keypoint_tokens.dtype not in COMPOSE_DTYPES:
        raise ValueError(f"unsupported dtype {keypoint_tokens.dtype}; expected float32, float16 or bfloat16")
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        raise ValueError(
            "all tensors must be on one device, got " + ", ".join(f"{n}={t.device}" for n, t in tensors.items())
        )
    shortest = K + num_patches
    if max_seqlen is None:
        max_seqlen = K + 4 * num_patches
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise TypeError(
            f"max_seqlen must be a python int (a static bound, not a tensor), got {type(max_seqlen).__name__}"
        )
    # some sample has at least ceil(S_p / R) selected patches
    needed = shortest + 3 * (-(-S_p // R) if R else 0)
    if max_seqlen < needed:
        raise ValueError(
            f"max_seqlen={max_seqlen} is below the longest sequence there must be: K + N_c + 3 * ceil(S_p / R) "
            f"= {needed} (K={K}, N_c={num_patches}, S_p={S_p}, R={R})"
        )
    return K, D, R, num_patches, S_p, max_seqlen


def _check_compose_values(
    order: torch.Tensor, cu_seqlens: torch.Tensor, K: int, num_patches: int, S_p: int, max_seqlen: int
) -> torch.Tensor:
    """Checks of the values of `cu_seqlens` and `order` (these read the tensors: a host sync on a GPU).

    Returns the (R,) int64 number of selected patches per sample, k_i = (L_i - K - N_c) / 3.
    """
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    extra = lengths - (K + num_patches)
    counts = torch.div(extra, 3, rounding_mode="floor")
    R = order.shape[0]
    if R:
        first, bad_len, longest, total = torch.stack([
            cu[0],
            ((extra % 3 != 0) | (counts < 0) | (counts > num_patches)).sum(),
            lengths.max(),
            counts.sum(),
        ]).tolist()
        bad_order = bool(((order < 0) | (order >= num_patches)).any())
    else:
        first, bad_len, longest, total, bad_order = int(cu[0]), 0, 0, 0, False
    if first != 0:
        raise ValueError(f"cu_seqlens[0] must be 0, got {first}")
    if bad_len:
        raise ValueError(
            f"every sequence length must be K + N_c + 3 k_i = {K + num_patches} + 3 k_i "
            f"with 0 <= k_i <= {num_patches}; "
            f"cu_seqlens gives lengths {lengths.tolist()}"
        )
    if total != S_p:
        raise ValueError(f"cu_seqlens gives {total} selected patches in all but fine_embed / reuse hold {S_p}")
    if longest > max_seqlen:
        raise ValueError(f"a sequence of length {longest} exceeds max_seqlen={max_seqlen}")
    if bad_order:
        raise ValueError(f"order must hold coarse patch indices in [0, {num_patches})")
    return counts


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
    """The packed fine-stage sequences (T, D) of R refined samples, T = R (K + N_c) + 3 S_p.

    The layout is the fine-stage token layout of docs/design.md, section 3: sample i selects
    k_i = (L_i - K - N_c) / 3 coarse patches, `order[i, :k_i]` (L_i from `cu_seqlens`).

    Index arithmetic, one gather per source and a scatter into the packed order; autograd gives
    the backward. The values of cu_seqlens and order are validated on CPU tensors only.
    """
    K, D, R, N_c, S_p, max_seqlen = _check_compose_args(
        keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens, coarse_grid, max_seqlen
    )
    # reading the values is free on the CPU, a sync elsewhere, and impossible while torch.export traces
    if cu_seqlens.device.type == "cpu" and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
        _check_compose_values(order, cu_seqlens, K, N_c, S_p, max_seqlen)
    counts = torch.div(cu_seqlens[1:].long() - cu_seqlens[:-1].long() - (K + N_c), 3, rounding_mode="floor")
    device, wc = keypoint_tokens.device, coarse_grid[1]
    wf = 2 * wc
    starts = cu_seqlens[:-1].long()
    samples = torch.arange(R, device=device)
    selected_offset = counts.cumsum(0) - counts  # o_i

    # selected parents, slot-major: global slot g = o_i + s
    slot_sample = torch.repeat_interleave(samples, counts, output_size=S_p)
    slot = torch.arange(S_p, device=device) - selected_offset[slot_sample]
    parent = order[slot_sample, slot].long()
    child = torch.arange(4, device=device)
    fine_index = (parent // wc * 2 * wf + parent % wc * 2)[:, None] + (child // 2) * wf + child % 2  # (S_p, 4)
    fine = fine_embed + fine_pos[fine_index.flatten()] + reuse.repeat_interleave(4, dim=0)
    fine_dest = (starts[slot_sample] + K + 4 * slot)[:, None] + child  # rows of the packed output

    # unselected coarse patches, rank k_i .. N_c - 1 of `order`
    rest_sample = torch.repeat_interleave(samples, N_c - counts, output_size=R * N_c - S_p)
    rest_offset = torch.cumsum(N_c - counts, 0) - (N_c - counts)
    rank = torch.arange(R * N_c - S_p, device=device) - rest_offset[rest_sample] + counts[rest_sample]
    rest = coarse_embed[rest_sample, order[rest_sample, rank].long()]
    rest_dest = starts[rest_sample] + K + 3 * counts[rest_sample] + rank  # K + 4 k_i + (rank - k_i)

    keypoints = keypoint_tokens.repeat(R, 1)
    keypoint_dest = (starts[:, None] + torch.arange(K, device=device)).flatten()

    source = torch.cat([keypoints, fine, rest])
    dest = torch.cat([keypoint_dest, fine_dest.flatten(), rest_dest])
    gather = torch.empty_like(dest).scatter_(0, dest, torch.arange(dest.numel(), device=device))
    return source[gather]


def padded_cu_seqlens(num_samples: int, seq_len: int, device: torch.device | str) -> torch.Tensor:
    """cu_seqlens (int32) of `num_samples` sequences of equal length `seq_len`."""
    return (torch.arange(num_samples + 1, device=device, dtype=torch.int32) * seq_len)


def _padded_args(keypoint_tokens, fine_embed, reuse, coarse_embed, order, coarse_grid, k):
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be a python int, got {type(k).__name__}")
    if coarse_embed.dim() != 3:
        raise ValueError(f"coarse_embed must be a (R, N_c, D) tensor, got shape {tuple(coarse_embed.shape)}")
    R, N_c, D = coarse_embed.shape
    if not 0 <= k <= N_c:
        raise ValueError(f"k must be in [0, N_c = {N_c}], got {k}")
    if fine_embed.dim() == 3:
        if tuple(fine_embed.shape[:2]) != (R, 4 * k):
            raise ValueError(f"3-D fine_embed must be (R, 4k, D) = {(R, 4 * k, D)}, got {tuple(fine_embed.shape)}")
        fine_embed = fine_embed.reshape(R * 4 * k, fine_embed.shape[-1])
    if reuse.dim() == 3:
        if tuple(reuse.shape[:2]) != (R, k):
            raise ValueError(f"3-D reuse must be (R, k, D) = {(R, k, D)}, got {tuple(reuse.shape)}")
        reuse = reuse.reshape(R * k, reuse.shape[-1])
    if fine_embed.dim() == 2 and fine_embed.shape[0] != 4 * R * k:
        raise ValueError(f"fine_embed must hold 4 R k = {4 * R * k} rows, got {fine_embed.shape[0]}")
    seq_len = keypoint_tokens.shape[0] + N_c + 3 * k
    return fine_embed, reuse, padded_cu_seqlens(R, seq_len, coarse_embed.device), seq_len


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

    It is the packed result reshaped: with equal lengths the packed layout is the padded one.
    fine_embed may be (R, 4k, D) or (4 R k, D); reuse (R, k, D) or (R k, D).
    """
    fine_embed, reuse, cu_seqlens, seq_len = _padded_args(
        keypoint_tokens, fine_embed, reuse, coarse_embed, order, coarse_grid, k
    )
    out = compose_tokens(keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens,
                         coarse_grid, seq_len)
    return out.reshape(coarse_embed.shape[0], seq_len, out.shape[-1])
