"""AdamW with layer-wise learning-rate decay, and the warm-up + step learning-rate schedule.

Both follow the released code (AnxQ/sharpose and ViTPose mmcv_custom LayerDecayOptimizerConstructor,
mmcv's StepLrUpdaterHook with linear warm-up).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

# parameters before the first block: layer 0 (the released constructor's ".patch_embed", ".pos_embed",
# ".cls_token", ".keypoint_tokens", ".quality_token"; pos_embed also covers SHaRPose's two)
EMBEDDING_NAMES = ("patch_embed", "pos_embed", "coarse_pos_embed", "fine_pos_embed", "cls_token",
                   "keypoint_tokens", "quality_token")
# never weight-decayed, besides biases and every 1-D parameter (norms)
NO_DECAY_KEYWORDS = ("pos_embed", "cls_token", "keypoint_tokens", "quality_token")


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings and tokens, i + 1 for blocks.i, num_layers + 1 for everything after the blocks
    (final norm, SHaRPose's reuse block and quality head, the decoder)."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.split(".")[0] in EMBEDDING_NAMES:
        return 0
    return num_layers + 1


def uses_weight_decay(name: str, param: torch.Tensor) -> bool:
    return not (param.ndim == 1 or name.endswith(".bias") or any(k in name for k in NO_DECAY_KEYWORDS))


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups by (layer, decay or not): lr_scale = layer_decay ** (num_layers + 1 - layer_id).

    Each group carries 'lr_scale', 'layer_id' and 'param_names' (for logs and tests); the schedule sets
    its 'lr' to base lr x lr_scale x the schedule factor.
    """
    num_layers = len(model.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid, decay = layer_id(name, num_layers), uses_weight_decay(name, param)
        group = groups.setdefault((lid, decay), {
            "params": [],
            "param_names": [],
            "layer_id": lid,
            "lr_scale": layer_decay ** (num_layers + 1 - lid),
            "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
                    layer_decay: float) -> torch.optim.AdamW:
    groups = layer_decay_param_groups(model, weight_decay, layer_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


@dataclass(frozen=True)
class LrSchedule:
    """mmcv's 'step' policy with linear warm-up, as a pure function of (iteration, epoch).

    The epoch factor is gamma ** (number of steps <= epoch) (0-based epochs: with steps [170, 200] the
    171st epoch is the first at 0.1x). During the first `warmup_iters` iterations (counted over the whole
    run) it is scaled by 1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio). Being stateless, the
    schedule resumes exactly from the saved iteration and epoch.
    """

    base_lr: float
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_ratio: float = 0.001

    def lr(self, iteration: int, epoch: int) -> float:
        lr = self.base_lr * self.gamma ** sum(epoch >= step for step in self.steps)
        if iteration < self.warmup_iters:
            lr *= 1.0 - (1.0 - iteration / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int, epoch: int) -> float:
        """Set every group's lr for this iteration; returns the unscaled lr (the last layers')."""
        lr = self.lr(iteration, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        return lr
