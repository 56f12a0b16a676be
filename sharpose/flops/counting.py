"""FLOP counting with fvcore (a multiply-add counted once; attention matmuls included)."""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn as nn

from sharpose.models.sharpose import SHaRPose


def _sdpa_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::scaled_dot_product_attention: Q K^T and P V, one multiply-add each per element."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _Traceable(nn.Module):
    """The model's outputs as a tuple of tensors (all of them, so tracing prunes no computation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(vars(out).values()) if isinstance(self.model, SHaRPose) else (out,)


def count_gflops(model: nn.Module, *, refine: bool = True) -> float:
    """GFLOPs of one image through `model` (eval mode, reference ops).

    For SHaRPose, `refine` chooses between a sample that runs both stages and one that exits
    after the coarse stage.
    """
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    restore: dict[str, Any] = {}
    if isinstance(model, SHaRPose):
        restore = {"qp_threshold": model.qp_threshold, "backend": model.backend}
        model.qp_threshold = math.inf if refine else -math.inf
        model.backend = "reference"
    try:
        images = torch.randn(1, model.in_chans, *model.input_size)
        analysis = FlopCountAnalysis(_Traceable(model), images)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        return analysis.total() / 1e9
    finally:
        for name, value in restore.items():
            setattr(model, name, value)
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
