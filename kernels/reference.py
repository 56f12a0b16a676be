"""Plain-PyTorch references of the Triton ops: the oracles for the tests and the CPU path.

Each function has the signature of its Triton counterpart in `kernels`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_score_args(
    q: torch.Tensor,
    k: torch.Tensor,
    score: torch.Tensor,
    score_rows: tuple[int, int] | None,
    score_cols: tuple[int, int] | None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    rows = score_rows if score_rows is not None else (0, q.shape[2])
    cols = score_cols if score_cols is not None else (0, k.shape[2])
    if not (0 <= rows[0] <= rows[1] <= q.shape[2]):
        raise ValueError(f"score_rows={rows} is outside the {q.shape[2]} query rows")
    if not (0 <= cols[0] <= cols[1] <= k.shape[2]):
        raise ValueError(f"score_cols={cols} is outside the {k.shape[2]} key columns")
    expected = (q.shape[0], cols[1] - cols[0])
    if tuple(score.shape) != expected or score.dtype != torch.float32:
        raise ValueError(
            f"score must be a float32 tensor of shape {expected} (batch, score columns), "
            f"got {score.dtype} {tuple(score.shape)}"
        )
    return rows, cols


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    score: torch.Tensor | None = None,
    score_rows: tuple[int, int] | None = None,
    score_cols: tuple[int, int] | None = None,
    score_weight: float = 1.0,
) -> torch.Tensor:
    """Softmax attention over (B, H, N, d) tensors.

    With `score`, also adds `score_weight` times the head-mean of the attention probabilities,
    summed over query rows `score_rows` and restricted to key columns `score_cols`, into the
    (B, n_cols) float32 `score` (one layer's term of the keypoint-attention EMA, Eq. 6-7).
    """
    if score is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    (r0, r1), (c0, c1) = _check_score_args(q, k, score, score_rows, score_cols)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = ((q @ k.transpose(-2, -1)) * scale).float().softmax(dim=-1)
    with torch.no_grad():
        # Eq. 7, one layer's term: mean over heads, sum over the keypoint rows
        score += score_weight * probs[:, :, r0:r1, c0:c1].sum(dim=2).mean(dim=1)
    return probs.to(v.dtype) @ v
