"""Training throughput, side by side: one timed call is one training step as `sharpose.train` takes it
(`training.loop.train_step`: forward under autocast, the pose loss with SHaRPose's quality term, backward,
AdamW step with layer-wise lr decay), for SHaRPose and ViTPose interleaved round-robin on the same batch.

What training does, the benchmark does:
- the models are in train mode: every SHaRPose sample runs both stages (early exit is inference only),
  dropout and drop path are active;
- the weights and the batch stay float32 and the dtype is autocast's (`train.amp`), with a GradScaler
  enabled for fp16 as the trainer does; fp32 means no autocast;
- the optimizer and the loss weights are the training config's defaults (`TrainConfig`), the quality
  loss included (its weight is 0 for most epochs, but the term is always in the graph, so its cost is
  always paid);
- the batch is synthetic but shaped like a collated training batch: random images, random joints in
  the crop with their UDP Gaussian targets and weights (some joints unlabelled), the crop's scale.
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sharpose.benchmark.calibration import exit_fraction, sharpose_tokens_per_image
from sharpose.benchmark.core import Benchmark, Entry, compare_with_vitpose, release_cuda_memory, sort_records
from sharpose.benchmark.environment import environment_info
from sharpose.benchmark.records import BenchmarkResult, BenchmarkSettings, Record, Unavailable, failed
from sharpose.benchmark.runners import Runner, peak_memory_mib
from sharpose.engine.config import TrainConfig
from sharpose.data.targets import udp_heatmap_targets
from sharpose.training.loop import train_step
from sharpose.training.optim import build_optimizer

TRAIN_MODE = "train"
AMP_FOR_DTYPE = {"fp32": "none", "fp16": "fp16", "bf16": "bf16"}
PIXEL_STD = 200.0  # a crop's scale is its size in units of 200 pixels (mmpose's convention)
LABELLED_FRACTION = 0.8  # share of joints with a label (weight 1), as in a typical COCO crop


def synthetic_training_batch(images: torch.Tensor, num_keypoints: int, heatmap_size: tuple[int, int],
                             seed: int = 0) -> dict[str, torch.Tensor]:
    """A collated training batch for `images` (B, 3, H, W): 'image', 'target' (B, K, h, w), 'target_weight'
    (B, K, 1), 'joints' (B, K, 3: x, y in the crop, visibility) and 'scale' (B, 2), on the images' device."""
    batch, _, height, width = images.shape
    rng = np.random.default_rng(seed)
    joints = rng.uniform(0.0, 1.0, (batch, num_keypoints, 2)) * (width - 1, height - 1)
    visible = (rng.uniform(size=(batch, num_keypoints)) < LABELLED_FRACTION).astype(np.float32)
    targets, weights = zip(*(udp_heatmap_targets(j, v, (height, width), heatmap_size, sigma=2.0)
                             for j, v in zip(joints, visible)))
    scale = np.tile(np.array([width, height], dtype=np.float32) / PIXEL_STD, (batch, 1))
    arrays = {
        "target": np.stack(targets),
        "target_weight": np.stack(weights),
        "joints": np.concatenate([joints, visible[..., None]], axis=-1).astype(np.float32),
        "scale": scale,
    }
    out = {key: torch.from_numpy(value).to(images.device) for key, value in arrays.items()}
    return {"image": images, **out}


@dataclass
class TrainingStep:
    """One training step of `model` on a fixed batch, with the trainer's own step function; calling it
    returns that function's detached loss terms ('loss' = the total)."""

    model: nn.Module
    batch: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    amp: str = "none"
    config: TrainConfig = field(default_factory=TrainConfig)
    scaler: torch.amp.GradScaler = field(init=False)  # enabled for fp16 only, as the trainer's

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.batch["image"].device.type, enabled=self.amp == "fp16")

    def __call__(self) -> dict[str, torch.Tensor]:
        return train_step(self.model, self.batch, self.optimizer, self.scaler, device=self.batch["image"].device,
                          amp=self.amp, quality_lambda=self.config.quality_lambda,
                          input_size=tuple(self.batch["image"].shape[-2:]), grad_clip=self.config.grad_clip)


def training_optimizer(model: nn.Module, config: TrainConfig | None = None) -> torch.optim.AdamW:
    """The trainer's AdamW (layer-wise lr decay) with the config's hyper-parameters (default: the defaults)."""
    config = config or TrainConfig()
    return build_optimizer(model, config.lr, config.betas, config.weight_decay, config.layer_decay)


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> int:
    """What a training step keeps resident between steps: weights, buffers, gradients, optimizer state, batch."""
    tensors = [*model.parameters(), *model.buffers(), *batch.values()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


class TrainingBenchmark(Benchmark):
    """The benchmark's models and round-robin timing, with a training step as the timed call: one runner
    per (model, batch size, SHaRPose backend), in mode 'train'."""

    def __init__(self, settings: BenchmarkSettings) -> None:
        # transformers' VitPose has no training loss of ours; the exit rate is the training one (none exits)
        super().__init__(replace(settings, hf_peer=False, modes=[TRAIN_MODE], exit_rates=[0.0]))
        self.amp = AMP_FOR_DTYPE[settings.dtype]
        self.dtype = torch.float32  # weights and batch: float32 master copies; the dtype is autocast's
        self.optimizers: dict[nn.Module, torch.optim.Optimizer] = {}  # one per model, shared by its runners
        self.notes.append(
            f"training steps: forward ({'no autocast' if self.amp == 'none' else self.amp + ' autocast'}, float32 "
            "weights), pose loss with the quality term, backward, AdamW step; models in train mode, so every "
            "SHaRPose sample runs both stages")

    def build_entry(self, name: str, family: str, size: str, resolution: str, budget: str | None) -> Entry:
        entry = Entry(name, family, size, resolution, None, token_budget=budget)
        model, _ = self.new_model(entry)
        if model is None:
            return entry
        if family == "vitpose":
            entry.tokens_per_image = float(model.grid[0] * model.grid[1])
        entry.model = model.to(self.device).train()
        self.optimizers[entry.model] = training_optimizer(entry.model)
        return entry

    def runners(self, entries: list[Entry]) -> tuple[list[Runner], list[Record]]:
        ready: list[Runner] = []
        failures: list[Record] = []
        for entry in entries:
            backends = self.settings.backends if entry.family == "sharpose" else [entry.backend]
            for batch in self.settings.batch_sizes:
                for backend in backends:
                    record = self.base_record(entry, backend, TRAIN_MODE, batch)
                    try:
                        ready.append(self.training_runner(entry, backend, batch, record))
                    except Exception as error:  # noqa: BLE001 - reported in the record
                        failures.append(failed(record, error))
                        release_cuda_memory(self.device)
        return ready, failures

    def training_runner(self, entry: Entry, backend: str, batch: int, record: Record) -> Runner:
        if entry.model is None:
            raise entry.error
        model, images = entry.model, self.images(entry.model.input_size, batch)
        if entry.family == "sharpose":
            if backend == "triton" and self.device.type != "cuda":
                raise Unavailable("the Triton kernels are timed on CUDA only (on the CPU they run interpreted)")
            record.exit_rate = 0.0

        # ViTPose's "backend" label names PyTorch's attention, not a kernels backend to switch to
        policy = functools.partial(model.exit_policy, backend=backend if entry.family == "sharpose" else None)
        with policy(), torch.no_grad():
            out = model(images)
        if out.refined is not None:
            record.achieved_exit_rate = exit_fraction(out.refined)
            record.tokens_per_image = sharpose_tokens_per_image(model, out)
        else:
            record.tokens_per_image = entry.tokens_per_image
        train_batch = synthetic_training_batch(images, out.heatmaps.shape[1], out.heatmaps.shape[-2:], self.settings.seed)
        optimizer = self.optimizers[model]
        step = TrainingStep(model, train_batch, optimizer, self.amp)
        with policy():
            step()  # optimizer state and gradients exist from here on, as in a running training
            record.peak_mem_mib = peak_memory_mib(step, self.device, training_state_bytes(model, optimizer, train_batch))
        return Runner(record, step, policy)

    def run(self) -> BenchmarkResult:
        environment = environment_info(self.device, self.settings.dtype)
        entries = self.build()
        ready, failures = self.runners(entries)
        timed = self.time_round_robin(ready)
        environment["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        records = sort_records(compare_with_vitpose(timed + failures))
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.settings).items()}
        return BenchmarkResult(environment, settings, records, self.notes)


def run_training_benchmark(settings: BenchmarkSettings) -> BenchmarkResult:
    """Training-step throughput of every model of `settings` (exit rates, modes and the HF peer do not apply)."""
    if torch.device(settings.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    return TrainingBenchmark(settings).run()

