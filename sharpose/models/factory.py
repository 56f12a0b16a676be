"""Named model configurations and `create_model`."""
from __future__ import annotations

import inspect
import math
from typing import Any

from sharpose.models.base import PoseModel
from sharpose.models.sharpose import SHaRPose
from sharpose.models.vitpose import ViTPose

_SMALL = dict(embed_dim=384, depth=12, num_heads=12, drop_path_rate=0.1)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)

# the released configs' values (AnxQ/sharpose configs/, ViTAE-Transformer/ViTPose configs/), so that a named
# model built here behaves as the released one; sharpose/configs/*.yaml repeat them for training
MODEL_CONFIGS: dict[str, tuple[type[PoseModel], dict[str, Any]]] = {
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


# ranges beyond the type: (test, what is valid)
RANGES = {
    "alpha": (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "beta": (lambda v: 0 <= v < 1, "an EMA factor in [0, 1)"),
    "drop_path_rate": (lambda v: 0 <= v < 1, "a rate in [0, 1)"),
    "mlp_ratio": (lambda v: v > 0, "a number > 0"),
    "tau": (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
}
SIZES = ("input_size", "heatmap_size")  # (H, W) pairs of whole numbers >= 1


def check_setting(name: str, key: str, value: Any, default: Any) -> None:
    """ValueError naming the setting and what is valid when `value` does not suit `key` (typed by its
    default): every count is a whole number >= 1, sizes are (H, W) pairs of them, numbers are not NaN."""
    def fail(valid: str) -> None:
        raise ValueError(f"{name}: {key}={value!r} is not valid: expected {valid}")

    if key in SIZES:
        if value is None and default is None:
            return
        if not (isinstance(value, (tuple, list)) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            fail("(H, W): two whole numbers >= 1, e.g. (256, 192)")
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            fail("True or False")
    elif isinstance(default, int) or (default is None and key == "k_max"):
        if value is None and default is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail("a whole number >= 1")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            fail("a number (not NaN)")
        test, valid = RANGES.get(key, (lambda v: True, ""))
        if not test(value):
            fail(valid)
    elif isinstance(default, str) and not isinstance(value, str):
        fail("a string")


def create_model(name: str, **overrides: Any) -> PoseModel:
    """Build a named model; keyword arguments override its configuration (e.g. alpha, backend).

    ValueError, naming the setting and what is valid, for an unknown setting or a value of the wrong type
    or range (depth=0, alpha='big', heatmap_size=(0, 0), ...)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    cls, config = MODEL_CONFIGS[name]
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"{name} does not take {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    settings = {**config, **overrides}
    for key, value in overrides.items():
        check_setting(name, key, value, accepted[key].default)
    settings = {k: tuple(v) if k in SIZES and isinstance(v, list) else v for k, v in settings.items()}
    patch = settings.get("patch_size", accepted["patch_size"].default)
    if any(side % patch for side in settings.get("input_size", accepted["input_size"].default)):
        raise ValueError(f"{name}: input_size={tuple(settings['input_size'])} is not valid: expected multiples of "
                         f"the patch size {patch}, e.g. (256, 192)")
    if settings.get("embed_dim", 1) % settings.get("num_heads", 1):
        raise ValueError(f"{name}: embed_dim={settings['embed_dim']} is not a multiple of "
                         f"num_heads={settings['num_heads']}")
    model = cls(**settings)
    model.arch = {"name": name, "overrides": overrides}  # saved with checkpoints of this project's format
    return model
