"""Loading released SHaRPose / ViTPose (mmpose layout) checkpoints and this project's own; atomic saving."""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

FORMAT = "sharpose-triton/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra: Any) -> None:
    """Write `model`'s weights (plus `extra` entries) in this project's format, atomically:
    a crash mid-write leaves any previous file at `path` intact."""
    path = Path(path)
    payload = {"format": FORMAT, "arch": getattr(model, "arch", None), "model": model.state_dict(), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file with `weights_only=True`, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def model_state(model: nn.Module, checkpoint: dict[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model's weights from a checkpoint in any supported layout, renamed to the model's names."""
    if checkpoint.get("format") == FORMAT:
        return checkpoint["model"]
    state = checkpoint.get("state_dict", checkpoint)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{source} is not a recognised checkpoint: expected this project's format, an mmpose "
            f"checkpoint with 'state_dict', or a plain state dict; found keys {sorted(checkpoint)[:8]}"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    rules = getattr(model, "released_key_map", ())
    if any(k.startswith(("backbone.", "keypoint_head.")) for k in state):
        state = {rename_key(k, rules): v for k, v in state.items()}
    return state


def rename_key(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    """Apply the first matching (pattern, replacement) rule; keys no rule matches are kept."""
    for pattern, replacement in rules:
        renamed, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return renamed
    return key


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load weights into `model` strictly; returns the whole checkpoint (for its other entries).

    Accepts the released SHaRPose and ViTPose (mmpose layout) checkpoints and this project's own.
    Any missing, unexpected or mis-shaped key raises a CheckpointError listing them.
    """
    checkpoint = read_checkpoint(path, map_location)
    state = model_state(model, checkpoint, source=f"checkpoint {path}")
    check_state_fits(model, state, source=f"checkpoint {path}", arch=checkpoint.get("arch"))
    model.load_state_dict(state)
    return checkpoint


def describe_arch(arch: dict[str, Any] | None) -> str:
    if not arch:
        return ""
    overrides = ", ".join(f"{k}={v!r}" for k, v in arch["overrides"].items())
    return f"{arch['name']}({overrides})"


def check_state_fits(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: dict[str, Any] | None = None
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or mis_shaped):
        return
    lines = [f"{source} does not fit the model {describe_arch(getattr(model, 'arch', None)) or type(model).__name__}"]
    if arch:
        lines.append(f"  the checkpoint was saved from {describe_arch(arch)}")
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
            lines.append(f"  {len(keys)} {title} key(s): {shown}")
    raise CheckpointError("\n".join(lines))
