"""What a training checkpoint holds beyond the weights, and putting it back (`--resume`).

Everything is stored as tensors and plain Python values, so that `read_checkpoint` loads it with
weights_only=True. The learning-rate schedule is a pure function of the saved iteration and epoch.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from sharpose.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps completed
    best_metric: float = float("-inf")  # best evaluation score so far (best.pth)


def rng_state() -> dict[str, Any]:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": np_pos,
                  "has_gauss": np_has_gauss, "gauss": np_gauss},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_training_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, progress: Progress, config: dict[str, Any],
                        world_size: int = 1) -> None:
    """Atomically write everything `--resume` needs (the unwrapped model: no DDP 'module.' prefix)."""
    save_checkpoint(
        model, path,
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict(),
        epoch=progress.epoch,
        iteration=progress.iteration,
        best_metric=progress.best_metric,
        rng=rng_state(),
        config=config,
        world_size=world_size,
    )


def load_training_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, *, batch_size: int | None = None,
                        world_size: int | None = None) -> tuple[Progress, dict[str, Any]]:
    """Restore model, optimizer and scaler from `path`; returns the progress and the RNG states, which
    the caller restores (`set_rng_state`) right before training continues.

    Resuming continues mid-epoch from the saved sample position, which is only the same data order with
    the same batch size and number of processes: CheckpointError when `batch_size` or `world_size`
    (when given) differ from the saved run's."""
    # read to the CPU: RNG states must stay CPU tensors; the loads copy weights and moments to their device
    checkpoint = load_checkpoint(model, path, map_location="cpu")
    missing = [k for k in ("optimizer", "scaler", "epoch", "iteration", "rng") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (no {', '.join(missing)}); "
                         "use it as train.init_checkpoint instead")
    saved_batch = (checkpoint.get("config") or {}).get("train", {}).get("batch_size")
    saved_world = checkpoint.get("world_size")  # absent in checkpoints of older versions
    differs = ((batch_size is not None and saved_batch is not None and saved_batch != batch_size)
               or (world_size is not None and saved_world is not None and saved_world != world_size))
    if differs:
        raise CheckpointError(
            f"{path} was saved by a run of {saved_world or '?'} process(es) x batch size {saved_batch}; this run "
            f"has {world_size} x {batch_size}: resume with the same (--set train.batch_size={saved_batch}, "
            f"{saved_world or 'the same number of'} process(es)), or start a new run from its weights with "
            f"--set train.init_checkpoint={path}")
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    progress = Progress(checkpoint["epoch"], checkpoint["iteration"], checkpoint.get("best_metric", float("-inf")))
    return progress, checkpoint["rng"]
