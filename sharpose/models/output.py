"""The one output type of every pose model, and its tuple form for tracing (export, FLOP counting)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class PoseOutput:
    """What a pose model returns. ViTPose fills `heatmaps` only; SHaRPose fills every field."""

    heatmaps: torch.Tensor  # (B, K, h, w): the final heatmaps (SHaRPose: fine where refined, else coarse)
    coarse_heatmaps: torch.Tensor | None = None  # (B, K, h, w) SHaRPose's coarse-stage heatmaps
    quality: torch.Tensor | None = None  # (B,) predicted heatmap quality Q
    refined: torch.Tensor | None = None  # (B,) bool: the sample ran the fine stage
    patch_scores: torch.Tensor | None = None  # (B, N_c) float32 keypoint-attention score of each coarse patch
    selected: torch.Tensor | None = None  # (B, k) long coarse-patch indices, best first; -1 on rows that exited

    def stage_heatmaps(self) -> torch.Tensor:
        """(B, S, K, h, w) heatmaps of every stage a sample can end in, earliest first: (coarse, fine) for
        SHaRPose when every sample refined, the single stage (S = 1) for ViTPose."""
        stages = [self.heatmaps] if self.coarse_heatmaps is None else [self.coarse_heatmaps, self.heatmaps]
        return torch.stack(stages, dim=1)


class TupleOutputs(nn.Module):
    """A pose model whose forward returns the tensors of `model.output_names` as a tuple, run under an
    exit policy (`model.exit_policy(**policy)`): the form tracers (TorchScript, ONNX, torch.export,
    fvcore) take."""

    def __init__(self, model: nn.Module, **policy: object) -> None:
        super().__init__()
        self.model = model
        self.policy = policy

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.model.output_names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self.model.exit_policy(**self.policy):
            out = self.model(images)
        return tuple(getattr(out, name) for name in self.model.output_names)
