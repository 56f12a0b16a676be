"""FLOP counting with fvcore (a multiply-add counted once; attention matmuls included)."""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn as nn

from sharpose.models import PoseModel, TupleOutputs


def _sdpa_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::scaled_dot_product_attention: Q K^T and P V, one multiply-add each per element."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_gflops(model: PoseModel, *, refine: bool = True) -> float:
    """GFLOPs of one image through `model` (eval mode, reference ops).

    For a model with early exit, `refine` chooses between a sample that runs every stage and one that
    exits after the coarse stage.
    """
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        images = torch.randn(1, model.in_chans, *model.input_size)
        # every output traced, so that tracing prunes no computation
        traced = TupleOutputs(model, qp_threshold=math.inf if refine else -math.inf, backend="reference")
        analysis = FlopCountAnalysis(traced, images)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        return analysis.total() / 1e9
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
