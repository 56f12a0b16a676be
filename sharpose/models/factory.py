"""Named model configurations and `create_model`."""
from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from sharpose.models.sharpose import SHaRPose
from sharpose.models.vitpose import ViTPose

_SMALL = dict(embed_dim=384, depth=12, num_heads=12, drop_path_rate=0.1)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)

# the released configs' values (AnxQ/sharpose configs/, ViTAE-Transformer/ViTPose configs/), so that a named
# model built here behaves as the released one; sharpose/configs/*.yaml repeat them for training
MODEL_CONFIGS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "sharpose_small_256x192": (SHaRPose, dict(_SMALL, input_size=(256, 192), alpha=0.5, qp_threshold=0.99)),
    "sharpose_small_384x288": (SHaRPose, dict(_SMALL, input_size=(384, 288), alpha=0.5, qp_threshold=0.99)),
    "sharpose_base_256x192": (SHaRPose, dict(_BASE, input_size=(256, 192), alpha=0.4, drop_path_rate=0.1,
                                               qp_threshold=0.99)),
    "sharpose_base_384x288": (SHaRPose, dict(_BASE, input_size=(384, 288), alpha=0.3, drop_path_rate=0.1,
                                               qp_threshold=1.2)),  # every sample refined
    "vitpose_small_256x192": (ViTPose, dict(_SMALL, input_size=(256, 192))),
    "vitpose_small_384x288": (ViTPose, dict(_SMALL, input_size=(384, 288))),
    "vitpose_base_256x192": (ViTPose, dict(_BASE, input_size=(256, 192), drop_path_rate=0.3)),
    "vitpose_base_384x288": (ViTPose, dict(_BASE, input_size=(384, 288), drop_path_rate=0.3)),
}


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a named model; keyword arguments override its configuration (e.g. alpha, backend)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    cls, config = MODEL_CONFIGS[name]
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"{name} does not take {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    model = cls(**{**config, **overrides})
    model.arch = {"name": name, "overrides": overrides}  # saved with checkpoints of this project's format
    return model
