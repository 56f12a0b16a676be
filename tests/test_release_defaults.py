"""A named model built with no overrides is the released configuration, and the shipped training configs agree.

The table below is written from the released config files (named per row), not from this package's code.
"""
from __future__ import annotations

import inspect

import pytest
import yaml

from sharpose.engine.config import CONFIG_DIR
from sharpose.models import create_model
from sharpose.models.factory import MODEL_CONFIGS

SHARPOSE_REPO = "AnxQ/sharpose configs/"
VITPOSE_REPO = "ViTAE-Transformer/ViTPose configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/"

# name -> (source, released values)
RELEASED = {
    "sharpose_small_256x192": (SHARPOSE_REPO + "sharpose_small_coco_256x192_4xb128_210e.py",
                               dict(embed_dim=384, depth=12, num_heads=12, input_size=(256, 192), alpha=0.5,
                                    qp_threshold=0.99, drop_path_rate=0.1)),
    # no released config: the small 256x192 recipe at 384x288
    "sharpose_small_384x288": (SHARPOSE_REPO + "sharpose_small_coco_256x192_4xb128_210e.py (at 384x288)",
                               dict(embed_dim=384, depth=12, num_heads=12, input_size=(384, 288), alpha=0.5,
                                    qp_threshold=0.99, drop_path_rate=0.1)),
    "sharpose_base_256x192": (SHARPOSE_REPO + "sharpose_base_coco_256x192_4xb64_210e.py",
                              dict(embed_dim=768, depth=12, num_heads=12, input_size=(256, 192), alpha=0.4,
                                   qp_threshold=0.99, drop_path_rate=0.1)),
    "sharpose_base_384x288": (SHARPOSE_REPO + "sharpose_base_coco_384x288_4xb64_210e.py",
                              dict(embed_dim=768, depth=12, num_heads=12, input_size=(384, 288), alpha=0.3,
                                   qp_threshold=1.2, drop_path_rate=0.1)),
    "vitpose_small_256x192": (VITPOSE_REPO + "ViTPose_small_coco_256x192.py",
                              dict(embed_dim=384, depth=12, num_heads=12, input_size=(256, 192),
                                   drop_path_rate=0.1, decoder="classic")),
    "vitpose_small_384x288": (VITPOSE_REPO + "ViTPose_small_coco_256x192.py (at 384x288)",
                              dict(embed_dim=384, depth=12, num_heads=12, input_size=(384, 288),
                                   drop_path_rate=0.1, decoder="classic")),
    "vitpose_base_256x192": (VITPOSE_REPO + "ViTPose_base_coco_256x192.py",
                             dict(embed_dim=768, depth=12, num_heads=12, input_size=(256, 192),
                                  drop_path_rate=0.3, decoder="classic")),
    "vitpose_base_384x288": (VITPOSE_REPO + "ViTPose_base_coco_256x192.py (at 384x288)",
                             dict(embed_dim=768, depth=12, num_heads=12, input_size=(384, 288),
                                  drop_path_rate=0.3, decoder="classic")),
}


def effective_settings(name: str) -> dict:
    """What create_model(name) passes to the class: its signature defaults, then the named settings."""
    cls, config = MODEL_CONFIGS[name]
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    return {**defaults, **config}


def test_every_named_model_is_in_the_table():
    assert sorted(RELEASED) == sorted(MODEL_CONFIGS)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_named_model_defaults_are_the_released_ones(name):
    source, released = RELEASED[name]
    settings = effective_settings(name)
    wrong = {k: (settings.get(k), v) for k, v in released.items() if tuple_if_list(settings.get(k)) != v}
    assert not wrong, f"{name} differs from {source}: (ours, released) = {wrong}"


@pytest.mark.parametrize("name", ["sharpose_base_256x192", "sharpose_base_384x288"])
def test_the_built_model_holds_the_released_exit_threshold(name):
    model = create_model(name, depth=1)  # depth does not affect the exit threshold; keeps the test fast
    assert model.qp_threshold == RELEASED[name][1]["qp_threshold"]
    assert model.alpha == RELEASED[name][1]["alpha"]


@pytest.mark.parametrize("path", sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.stem != "tiny"), ids=lambda p: p.stem)
def test_shipped_training_configs_agree_with_the_named_model(path):
    model = yaml.safe_load(path.read_text())["model"]
    settings = effective_settings(model["name"])
    differing = {k: (v, settings.get(k)) for k, v in model["overrides"].items()
                 if tuple_if_list(v) != tuple_if_list(settings.get(k))}
    assert not differing, f"{path.name} overrides differ from {model['name']}'s defaults: {differing}"


def tuple_if_list(value):
    return tuple(value) if isinstance(value, list) else value
