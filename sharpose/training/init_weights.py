"""Initialising a model from MAE, ViTPose or SHaRPose weights (non-strict, unlike `load_checkpoint`).

Sources and how their names are read:
  * this project's checkpoints, of either model;
  * released SHaRPose / ViTPose checkpoints (mmpose layout, `backbone.*`), renamed with the model
    class's own `released_key_map`;
  * MAE / timm ViT checkpoints (`model` key): cls_token, pos_embed (1, 1 + N, D) on a square grid
    (14x14 at 224x224), patch_embed, blocks, norm -- the names this project's ViTPose uses.

A ViT-style `pos_embed` (one extra slot, then the patch grid) is resized with bicubic interpolation
(align_corners=False, as the released mmcv_custom loaders do) to every grid the target needs: ViTPose
keeps the extra slot; SHaRPose gets coarse_pos_embed and fine_pos_embed. For SHaRPose the released loader
drops the extra slot of an MAE checkpoint (it is the cls token's position); a ViTPose checkpoint's extra
slot is added to every patch position instead, since ViTPose adds it to every token. Position embeddings
present under the target's own names but on another grid are resized too. Every other tensor is loaded
when its name and shape match; the rest keeps its initialisation and is reported.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from sharpose.checkpoint import FORMAT, CheckpointError, read_checkpoint, rename_key
from sharpose.models import PoseModel, SHaRPose, ViTPose


@dataclass
class InitReport:
    source: str  # which layout the checkpoint had
    loaded: list[str] = field(default_factory=list)  # model keys set from the checkpoint
    resized: list[str] = field(default_factory=list)  # ... of which position embeddings were resized
    skipped: list[str] = field(default_factory=list)  # checkpoint keys not used
    kept: list[str] = field(default_factory=list)  # model keys left at their initialisation

    def summary(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys) - 6} more)" if len(keys) > 6 else "")

        return (f"initialised from a {self.source} checkpoint: loaded {len(self.loaded)} tensors"
                f" (resized: {names(self.resized) or 'none'}); skipped {len(self.skipped)} checkpoint tensors"
                f" ({names(self.skipped) or 'none'}); {len(self.kept)} model tensors keep their init"
                f" ({names(self.kept) or 'none'})")


def initialise_from_checkpoint(model: nn.Module, path: str | os.PathLike) -> InitReport:
    """Load what fits of the checkpoint at `path` into `model`; CheckpointError when nothing does."""
    source, state = source_state(read_checkpoint(path))
    target = model.state_dict()
    adapted, resized = adapt_position_embeddings(model, state, source)
    report = InitReport(source)
    usable = {}
    for key, value in adapted.items():
        if key in target and value.shape == target[key].shape:
            usable[key] = value
        else:
            report.skipped.append(key)
    if not usable:
        raise CheckpointError(
            f"checkpoint {path} ({source} layout) has no tensor matching {type(model).__name__} by name and "
            f"shape; its keys start with {sorted(state)[:6]}"
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = list(usable)
    report.resized = [k for k in resized if k in usable]
    report.kept = [k for k in target if k not in usable]
    return report


def source_state(checkpoint: dict) -> tuple[str, dict[str, torch.Tensor]]:
    """(layout name, state dict in this project's names) of a checkpoint of any supported layout."""
    if checkpoint.get("format") == FORMAT:
        return "sharpose-triton", checkpoint["model"]
    if isinstance(checkpoint.get("state_dict"), dict):
        state = checkpoint["state_dict"]
    elif isinstance(checkpoint.get("model"), dict):
        state = checkpoint["model"]
    else:
        state = checkpoint
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.pos_embed_list.") for k in state):
        return "released SHaRPose", {rename_key(k, SHaRPose.released_key_map): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        return "released ViTPose", {rename_key(k, ViTPose.released_key_map): v for k, v in state.items()}
    return ("MAE/timm ViT" if "cls_token" in state else "plain"), state


def adapt_position_embeddings(
    model: PoseModel, state: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state with position embeddings made to fit the model's grids; also the names resized."""
    state = dict(state)
    resized = []
    grids = model.position_grids
    # a ViT's pos_embed feeds a model that names its position embeddings otherwise (SHaRPose)
    vit = None if "pos_embed" in grids else state.pop("pos_embed", None)
    for name, (grid, extra) in grids.items():
        if name in state:
            pos = state[name][0]
        elif vit is not None:
            # ViTPose adds its extra slot to every patch token; MAE's is the cls token's (dropped)
            pos = vit[0, 1:] + vit[0, :1] if source == "released ViTPose" else vit[0, 1:]
        else:
            continue
        state[name] = torch.cat([pos[:extra], resize_grid(pos[extra:], grid)])[None]
        resized.append(name)
    return state, resized


def resize_grid(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, D) embeddings of a row-major grid -> (grid[0] * grid[1], D), bicubic; unchanged when equal.

    Checkpoints do not store their grid: it is square when N is a square (MAE), else the factor pair
    of N closest to the target's aspect ratio (ViTPose's 16x12 and 24x18, SHaRPose's 8x6 ...).
    """
    src_grid = guess_grid(pos.shape[0], grid)
    if tuple(src_grid) == tuple(grid):
        return pos
    image = pos.float().T.reshape(1, -1, *src_grid)
    out = F.interpolate(image, size=grid, mode="bicubic", align_corners=False)
    return out.reshape(pos.shape[1], -1).T.to(pos.dtype)


def guess_grid(n: int, like: tuple[int, int]) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side == n:
        return side, side
    pairs = [(h, n // h) for h in range(1, n + 1) if n % h == 0]
    aspect = math.log(like[0] / like[1])
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1]) - aspect))
