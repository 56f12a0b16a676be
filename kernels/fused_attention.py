"""Fused attention with keypoint-attention EMA accumulation (Triton). Placeholder until the kernel lands."""
from __future__ import annotations

import torch


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
    raise NotImplementedError("the Triton fused attention kernel is not implemented yet")
