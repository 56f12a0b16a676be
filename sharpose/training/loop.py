"""The training loop behind `python -m sharpose.train`: one process, or torchrun + DistributedDataParallel.

Output directory: config.yaml (the config used), log.jsonl (one record per logging interval, per
evaluation and for the initialisation), latest.pth (full training state: every train.checkpoint_interval
iterations, or at every epoch end when that is 0, and when the run ends) and best.pth (weights with the
best primary metric, AP or PCKh, of the evaluations every train.eval_interval epochs).

Resuming (`resume=` a latest.pth) restores model, optimizer, GradScaler, epoch, iteration, best metric
and RNG states and continues mid-epoch where the run stopped: the data order and the augmentation are
functions of (seed, epoch, index) (see sampling.py), so the next step is the one the uninterrupted run
would have taken. Resume with the same number of processes and batch size (checked). Log records of
iterations after the saved one (trained before a crash, trained again now) are dropped on resume.

A run refuses an output directory that already holds a run (latest.pth, best.pth or log.jsonl) unless it
resumes or is told to overwrite; temporary files of saves killed mid-write are removed at start.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from sharpose.checkpoint import remove_stale_temporaries, save_checkpoint
from sharpose.engine.amp import autocast
from sharpose.engine.builders import build_model, build_train_dataset, build_val_dataset
from sharpose.engine.config import Config, ConfigError, check_files, dump_config
from sharpose.engine.distributed import DistContext, all_reduce_mean, barrier, setup_distributed, teardown_distributed
from sharpose.evaluation.runner import evaluate_model
from sharpose.training.init_weights import initialise_from_checkpoint
from sharpose.training.jsonlog import JsonLinesLog
from sharpose.training.loss import pose_loss
from sharpose.training.optim import LrSchedule, build_optimizer
from sharpose.training.sampling import ResumableSampler, SeededSamples
from sharpose.training.state import Progress, load_training_state, save_training_state, set_rng_state


RUN_FILES = ("latest.pth", "best.pth", "log.jsonl", "config.yaml")  # what a run writes to its output_dir


def train(config: Config, *, resume: str | os.PathLike | None = None, progress: bool = True,
          overwrite: bool = False) -> dict[str, Any] | None:
    """Train as the config says (under torchrun: this process's part). Returns a summary on the main
    process (None elsewhere): 'iterations', 'epochs', 'stopped_early', 'best_metric' (None before any
    evaluation), the checkpoint paths and 'last_eval' (the last evaluation report, if any).

    ConfigError when output_dir holds an earlier run and neither `resume` nor `overwrite` is given;
    `overwrite` deletes that run's files first."""
    check_files(config, training=True)
    check_output_dir(Path(config.output_dir), resume=resume is not None, overwrite=overwrite)
    ctx = setup_distributed()
    try:
        return Trainer(config, ctx, progress=progress).run(resume)
    finally:
        teardown_distributed(ctx)


def check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix a new run into an earlier one's files; with `overwrite`, delete them."""
    earlier = [name for name in RUN_FILES[:3] if (out / name).exists()]
    if not earlier or resume:
        return
    if not overwrite:
        raise ConfigError(f"output_dir {out} already holds a run ({', '.join(earlier)}): continue it with "
                          f"--resume {out / 'latest.pth'}, start over there with --overwrite, or choose "
                          "another folder with --set output_dir=DIR")
    if int(os.environ.get("RANK", "0")) == 0:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


def train_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, *, device: torch.device, amp: str, quality_lambda: float,
               input_size: tuple[int, int], grad_clip: float | None,
               sigmas: Any = None) -> dict[str, torch.Tensor]:
    """One optimizer step on a collated batch; returns the detached loss terms ('loss' = the total)."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with autocast(device, amp):
        output = model(batch["image"])
    extra = {} if sigmas is None else {"sigmas": sigmas}  # the dataset's OKS constants (default: COCO's)
    loss = pose_loss(output, batch, quality_lambda=quality_lambda, input_size=input_size, **extra)  # float32
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss.total).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return {"loss": loss.total.detach(), **loss.terms}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: Config, ctx: DistContext, *, progress: bool = True) -> None:
        self.config, self.ctx, self.show_progress = config, ctx, progress
        cfg = config.train
        self.out = Path(config.output_dir)
        self.log = JsonLinesLog(self.out / "log.jsonl", enabled=ctx.is_main)
        seed_everything(config.seed)
        self.model = build_model(config)
        self.model.to(ctx.device)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.betas, cfg.weight_decay, cfg.layer_decay)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")
        self.schedule = LrSchedule(cfg.lr, tuple(cfg.lr_steps), cfg.lr_gamma, cfg.warmup_iters, cfg.warmup_ratio)
        dataset = build_train_dataset(config)
        self.sigmas = dataset.info.sigmas
        self.sampler = ResumableSampler(dataset, ctx.world_size, ctx.rank, config.seed)
        # own generator: creating the iterator must not draw from the global RNG (exact resume)
        self.loader = DataLoader(SeededSamples(dataset, config.seed), batch_size=cfg.batch_size,
                                 sampler=self.sampler, num_workers=config.data.workers,
                                 pin_memory=ctx.device.type == "cuda", generator=torch.Generator())
        self.iters_per_epoch = math.ceil(self.sampler.num_samples / cfg.batch_size)
        self.val_dataset = build_val_dataset(config) if cfg.eval_interval > 0 else None
        self.progress = Progress()
        self.last_eval: dict[str, Any] | None = None

    def say(self, message: str) -> None:
        if self.ctx.is_main:  # stderr, with the progress bars: stdout is left to the caller
            tqdm.write(message, file=sys.stderr)

    def run(self, resume: str | os.PathLike | None) -> dict[str, Any] | None:
        cfg = self.config.train
        rng = None
        if self.ctx.is_main:
            removed = remove_stale_temporaries(self.out)
            if removed:
                self.say(f"removed {removed} temporary file(s) of checkpoint saves interrupted in {self.out}")
        if resume is not None:
            self.progress, rng = load_training_state(resume, self.model, self.optimizer, self.scaler,
                                                     batch_size=cfg.batch_size, world_size=self.ctx.world_size)
            self.log.drop_after(self.progress.iteration)  # iterations after the save are trained again
            self.say(f"resumed from {resume} at epoch {self.progress.epoch}, iteration {self.progress.iteration}")
        elif cfg.init_checkpoint:
            report = initialise_from_checkpoint(self.model, cfg.init_checkpoint)
            self.say(f"{cfg.init_checkpoint}: {report.summary()}")
            self.log.write({"mode": "init", "checkpoint": cfg.init_checkpoint, "message": report.summary()})
        net = self.model
        if self.ctx.distributed:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(self.config, self.out / "config.yaml")
        if rng is not None:
            set_rng_state(rng)  # last: nothing between here and the next step may draw random numbers

        stopped = cfg.max_iters is not None and self.progress.iteration >= cfg.max_iters
        while self.progress.epoch < cfg.epochs and not stopped:
            stopped = self.train_epoch(net)
            if not stopped:
                self.progress.epoch += 1
                if self.evaluation_due():
                    self.evaluate()
                if self.checkpoint_due(epoch_end=True):
                    self.save_latest()
        if not self.ctx.is_main:
            return None
        return {
            "iterations": self.progress.iteration,
            "epochs": self.progress.epoch,
            "stopped_early": stopped,
            "best_metric": self.progress.best_metric if math.isfinite(self.progress.best_metric) else None,
            "latest_checkpoint": str(self.out / "latest.pth"),
            "best_checkpoint": str(self.out / "best.pth") if (self.out / "best.pth").exists() else None,
            "last_eval": self.last_eval,
        }

    def train_epoch(self, net: nn.Module) -> bool:
        """Train the rest of the current epoch; True when train.max_iters stopped the run."""
        cfg, ctx, progress = self.config.train, self.ctx, self.progress
        epoch = progress.epoch
        done = progress.iteration - epoch * self.iters_per_epoch  # batches of this epoch already trained
        self.sampler.set_epoch(epoch, start=done * cfg.batch_size)
        quality_lambda = cfg.quality_lambda if epoch >= cfg.quality_start_epoch else 0.0
        net.train()
        sums: dict[str, torch.Tensor] = {}
        count, tick = 0, time.perf_counter()
        bar = tqdm(total=self.iters_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (self.show_progress and ctx.is_main), leave=False)
        try:
            for batch in self.loader:
                lr = self.schedule.apply(self.optimizer, progress.iteration, epoch)
                terms = train_step(net, batch, self.optimizer, self.scaler, device=ctx.device, amp=cfg.amp,
                                   quality_lambda=quality_lambda, input_size=self.config.data.input_size,
                                   grad_clip=cfg.grad_clip, sigmas=self.sigmas)
                progress.iteration += 1
                count += 1
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.update()
                if progress.iteration % cfg.log_interval == 0:
                    means = all_reduce_mean({k: v / count for k, v in sums.items()}, ctx)
                    record = {"mode": "train", "epoch": epoch + 1, "iter": progress.iteration, "lr": lr,
                              "quality_lambda": quality_lambda, **means,
                              "time": (time.perf_counter() - tick) / count}
                    self.log.write(record)
                    bar.set_postfix(loss=f"{means['loss']:.3g}", lr=f"{lr:.2e}")
                    sums, count, tick = {}, 0, time.perf_counter()
                if cfg.max_iters is not None and progress.iteration >= cfg.max_iters:
                    self.save_latest()
                    return True
                if self.checkpoint_due(epoch_end=False):
                    self.save_latest()
        finally:
            bar.close()
        return False

    def checkpoint_due(self, epoch_end: bool) -> bool:
        """latest.pth is written every train.checkpoint_interval iterations (at an epoch end when one falls
        on its last batch, so that the save holds the completed epoch), at every epoch end when that is 0,
        and after the last epoch."""
        cfg, progress = self.config.train, self.progress
        on_interval = cfg.checkpoint_interval > 0 and progress.iteration % cfg.checkpoint_interval == 0
        if epoch_end:
            return cfg.checkpoint_interval == 0 or on_interval or progress.epoch == cfg.epochs
        return on_interval and progress.iteration < (progress.epoch + 1) * self.iters_per_epoch

    def evaluation_due(self) -> bool:
        interval, epoch = self.config.train.eval_interval, self.progress.epoch
        return interval > 0 and (epoch % interval == 0 or epoch == self.config.train.epochs)

    def evaluate(self) -> None:
        report = evaluate_model(self.model, self.val_dataset, self.config, self.ctx, sweep=False)
        if report is not None:
            score = report["metrics"].get(report["metric"], float("nan"))
            self.log.write({"mode": "val", "epoch": self.progress.epoch, "iter": self.progress.iteration,
                            **report["metrics"], "exit_rate": report.get("exit_rate"), "time": report["time"]})
            if score > self.progress.best_metric:
                self.progress.best_metric = score
                save_checkpoint(self.model, self.out / "best.pth", epoch=self.progress.epoch,
                                iteration=self.progress.iteration, metrics=report["metrics"],
                                config=self.config.to_dict())
            self.say(f"epoch {self.progress.epoch}: {report['metric']} {score:.4f} "
                     f"(best {self.progress.best_metric:.4f})")
            self.last_eval = report
        barrier(self.ctx)

    def save_latest(self) -> None:
        if self.ctx.is_main:
            save_training_state(self.out / "latest.pth", self.model, self.optimizer, self.scaler, self.progress,
                                self.config.to_dict(), world_size=self.ctx.world_size)
        barrier(self.ctx)
