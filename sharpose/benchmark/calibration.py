"""Exit-rate calibration: the `qp_threshold` at which a wanted share of the benchmark batch exits after
the coarse stage, the share that did exit, and SHaRPose's tokens per image."""
from __future__ import annotations

import math
from typing import Any

import torch

from sharpose.models.sharpose import SHaRPose


def threshold_for_exit_rate(quality: torch.Tensor, rate: float) -> float:
    """The `qp_threshold` at which round(rate * B) of these samples exit (Q >= threshold), or as
    close as ties allow (closest count; on equal distance, fewer exits).

    The threshold is one of the quality values itself (or +-inf), so comparing it with a bf16/fp16
    quality tensor is exact: a value between two neighbours could round onto one of them.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"exit rate must be in [0, 1], got {rate}")
    values = quality.detach().flatten().double().cpu()
    if not torch.isfinite(values).all():
        raise ValueError("quality holds NaN or inf values; no threshold gives a defined exit rate")
    wanted = round(rate * values.numel())
    if wanted == 0:
        return math.inf
    if wanted == values.numel():
        return -math.inf
    distinct, counts = torch.unique(values, return_counts=True)  # ascending
    exits_at = counts.flip(0).cumsum(0).flip(0)  # threshold distinct[i] lets every value >= it exit
    candidates = [(0, math.inf)] + [(int(n), float(v)) for n, v in zip(exits_at, distinct)]
    return min(candidates, key=lambda c: (abs(c[0] - wanted), c[0]))[1]


def exit_fraction(refined: torch.Tensor) -> float:
    """Fraction of the batch that exited after the coarse stage, from the model's own `out.refined`."""
    return 1.0 - refined.float().mean().item()


def sharpose_tokens_per_image(model: SHaRPose, out: Any) -> float:
    """Mean transformer tokens per image over both stages, from the model's outputs: the coarse
    sequence [quality, keypoints, coarse patches] for every sample, plus, for refined samples, the fine
    sequence [keypoints, 4 children of each selected patch, the other coarse patches]."""
    coarse = 1 + model.num_keypoints + model.num_coarse
    selected = (out.selected >= 0).sum(1).double()
    fine = (model.num_keypoints + model.num_coarse + 3 * selected) * out.refined.double()
    return coarse + fine.mean().item()
