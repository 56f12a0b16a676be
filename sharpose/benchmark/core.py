"""The benchmark itself: builds the models, prepares a runner per case (calibrating SHaRPose's exit
rate), times them round-robin, and compares every row with ViTPose of the same size and resolution."""
from __future__ import annotations

import functools
import math
import os
import statistics
import sys
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from sharpose.benchmark.calibration import exit_fraction, sharpose_tokens_per_image, threshold_for_exit_rate
from sharpose.benchmark.environment import environment_info
from sharpose.benchmark.records import (
    DTYPES,
    MODES,
    RESOLUTIONS,
    TOKEN_BUDGETS,
    BenchmarkResult,
    BenchmarkSettings,
    Record,
    Unavailable,
    failed,
    first_line,
    parse_model_name,
)
from sharpose.benchmark.runners import (
    Runner,
    build_hf_vitpose,
    hf_available,
    peak_memory_mib,
    resident_bytes,
    time_call,
    with_mode,
)
from sharpose.flops.cache import FlopCounter, flop_ratio_limit, mean_gflops
from sharpose.models.factory import create_model
from sharpose.models.sharpose import SHaRPose


@dataclass
class Entry:
    """A built model with what the records need from it."""

    name: str
    family: str
    size: str
    resolution: str
    model: nn.Module | None
    token_budget: str | None = None
    backend: str = "sdpa"
    tokens_per_image: float | None = None  # ViTPose and its HF peer: the patch tokens
    gflops: float | None = None  # ViTPose; SHaRPose with every sample refined
    coarse_gflops: float | None = None  # SHaRPose: a sample exiting after the coarse stage
    error: BaseException | None = None


class Benchmark:
    """Builds the models, prepares one runner per case, times them round-robin, fills the records."""

    def __init__(self, settings: BenchmarkSettings) -> None:
        self.settings = settings
        self.device = torch.device(settings.device)
        if settings.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {settings.dtype!r}")
        self.dtype = DTYPES[settings.dtype]
        self.flops = FlopCounter(settings.flop_cache)
        self.notes: list[str] = []
        self.inputs: dict[tuple[tuple[int, int], int], torch.Tensor] = {}

    # --- models

    def build(self) -> list[Entry]:
        entries: list[Entry] = []
        for name in self.settings.models:
            family, size, resolution = parse_model_name(name)
            budgets = self.settings.token_budgets if family == "sharpose" else [None]
            for budget in budgets:
                entries.append(self.build_entry(name, family, size, resolution, budget))
            if family == "vitpose" and self.settings.hf_peer and hf_available() and entries[-1].model is not None:
                entries.append(self.build_hf_entry(entries[-1]))
        if self.settings.hf_peer and not hf_available():
            self.notes.append("transformers is not installed: the HF VitPose peer was skipped")
        if self.device.type != "cuda" and "triton" not in self.settings.backends:
            self.notes.append("SHaRPose's triton backend is timed on CUDA only: reference backend here")
        return entries

    def new_model(self, entry: Entry) -> tuple[nn.Module | None, dict[str, Any]]:
        """The entry's named model with this run's overrides, built from the run's seed, and the overrides;
        None (with `entry.error` set) when the overrides do not fit the model."""
        overrides = dict(self.settings.model_overrides)
        if entry.token_budget == "adaptive":
            overrides["token_budget"] = "adaptive"
        torch.manual_seed(self.settings.seed)
        try:
            return create_model(entry.name, **overrides), overrides
        except (ValueError, TypeError) as error:
            entry.error = Unavailable(f"create_model({entry.name!r}, **{overrides}) failed: {first_line(error)}")
            return None, overrides

    def build_entry(self, name: str, family: str, size: str, resolution: str, budget: str | None) -> Entry:
        entry = Entry(name, family, size, resolution, None, token_budget=budget)
        model, overrides = self.new_model(entry)
        if model is None:
            return entry
        model.eval()
        if budget != "adaptive":  # an adaptive budget's cost depends on the image; fvcore sees one
            entry.gflops = self.flops.gflops(name, overrides, model, refine=True)
            if family == "sharpose":
                entry.coarse_gflops = self.flops.gflops(name, overrides, model, refine=False)
        if family == "vitpose":  # SHaRPose's count depends on its exit decisions: fill_sharpose_record
            entry.tokens_per_image = float(model.grid[0] * model.grid[1])
        entry.model = model.to(device=self.device, dtype=self.dtype)
        return entry

    def build_hf_entry(self, ours: Entry) -> Entry:
        entry = Entry("hf_" + ours.name, "hf_vitpose", ours.size, ours.resolution, None, gflops=ours.gflops,
                      tokens_per_image=ours.tokens_per_image)
        torch.manual_seed(self.settings.seed)
        try:
            model, entry.backend = build_hf_vitpose(ours.model)
        except Exception as error:  # noqa: BLE001 - an outside library: report, do not stop the run
            entry.error = error
            return entry
        entry.model = model.eval().to(device=self.device, dtype=self.dtype)
        return entry

    def images(self, input_size: tuple[int, int], batch: int) -> torch.Tensor:
        key = (tuple(input_size), batch)
        if key not in self.inputs:
            generator = torch.Generator().manual_seed(self.settings.seed)
            batch_images = torch.randn(batch, 3, *input_size, generator=generator)
            self.inputs[key] = batch_images.to(device=self.device, dtype=self.dtype)
        return self.inputs[key]

    # --- cases

    def base_record(self, entry: Entry, backend: str, mode: str, batch: int) -> Record:
        return Record(
            model=entry.name, family=entry.family, size=entry.size, resolution=entry.resolution, backend=backend,
            mode=mode, token_budget=entry.token_budget, batch_size=batch, dtype=self.settings.dtype,
            device=str(self.device), gflops_per_image=entry.gflops,
            gflops_source=self.flops.source() if entry.gflops is not None else None,
        )

    def runners(self, entries: Iterable[Entry]) -> tuple[list[Runner], list[Record]]:
        """Runners ready to time, and the records of the cases that cannot run."""
        ready: list[Runner] = []
        failures: list[Record] = []
        for entry in entries:
            for batch in self.settings.batch_sizes:
                for mode in self.settings.modes:
                    if entry.family == "sharpose":
                        for backend in self.settings.backends:
                            self.sharpose_runners(entry, backend, mode, batch, ready, failures)
                    else:
                        self.plain_runner(entry, mode, batch, ready, failures)
        return ready, failures

    def plain_runner(self, entry: Entry, mode: str, batch: int, ready: list[Runner], failures: list[Record]) -> None:
        record = self.base_record(entry, entry.backend, mode, batch)
        if entry.model is None:
            failures.append(failed(record, entry.error))
            return
        model, images = entry.model, self.images(entry.model.input_size, batch)
        record.tokens_per_image = entry.tokens_per_image
        try:
            call = lambda: model(images)  # noqa: E731
            record.peak_mem_mib = peak_memory_mib(call, self.device, resident_bytes(model, images))
            ready.append(Runner(record, with_mode(call, model, images, mode)))
        except Exception as error:  # noqa: BLE001 - reported in the record
            failures.append(failed(record, error))
            release_cuda_memory(self.device)

    def sharpose_runners(
        self, entry: Entry, backend: str, mode: str, batch: int, ready: list[Runner], failures: list[Record]
    ) -> None:
        """One runner per exit rate, each with a threshold calibrated on this batch and backend."""
        records = [replace(self.base_record(entry, backend, mode, batch), exit_rate=rate)
                   for rate in self.settings.exit_rates]
        if entry.model is None:
            failures.extend(failed(r, entry.error) for r in records)
            return
        model, images = entry.model, self.images(entry.model.input_size, batch)
        try:
            if backend == "triton" and self.device.type != "cuda":
                raise Unavailable("the Triton kernels are timed on CUDA only (on the CPU they run interpreted)")
            with model.exit_policy(qp_threshold=math.inf, backend=backend):
                quality = model(images).quality
        except Exception as error:  # noqa: BLE001 - e.g. NotImplementedError from a kernel not written yet
            failures.extend(failed(r, error) for r in records)
            release_cuda_memory(self.device)
            return
        call = lambda: model(images)  # noqa: E731
        for record in records:
            threshold = threshold_for_exit_rate(quality, record.exit_rate)
            policy = functools.partial(model.exit_policy, qp_threshold=threshold, backend=backend)
            try:
                with policy():  # capture or compile with this case's threshold
                    out = model(images)
                    self.fill_sharpose_record(record, entry, model, out, threshold)
                    record.peak_mem_mib = peak_memory_mib(call, self.device, resident_bytes(model, images))
                    ready.append(Runner(record, with_mode(call, model, images, mode), policy))
            except Exception as error:  # noqa: BLE001 - reported in the record
                failures.append(failed(record, error))
                release_cuda_memory(self.device)

    @staticmethod
    def fill_sharpose_record(record: Record, entry: Entry, model: SHaRPose, out: Any, threshold: float) -> None:
        record.qp_threshold = threshold
        record.achieved_exit_rate = exit_fraction(out.refined)
        record.tokens_per_image = sharpose_tokens_per_image(model, out)
        if entry.gflops is not None and entry.coarse_gflops is not None:
            record.gflops_per_image = mean_gflops(entry.gflops, entry.coarse_gflops, record.achieved_exit_rate)

    # --- timing

    def time_round_robin(self, runners: list[Runner]) -> list[Record]:
        """Warm-up rounds, then `iters` rounds timing every runner once; a runner that fails is dropped."""
        rounds = self.settings.warmup + self.settings.iters
        live = list(runners)
        dropped: list[Record] = []
        with tqdm(total=rounds * len(live), desc="timing", unit="run", file=sys.stderr,
                  disable=not self.settings.progress, leave=False) as bar:
            for round_index in range(rounds):
                for runner in list(live):
                    try:
                        with runner.policy():
                            elapsed = time_call(runner.call, self.device)
                    except Exception as error:  # noqa: BLE001 - reported in the record
                        live.remove(runner)
                        dropped.append(failed(runner.record, error))
                        continue
                    if round_index >= self.settings.warmup:
                        runner.record.times_ms.append(elapsed)
                    bar.update()
        for runner in live:
            finish_timing(runner.record)
        return [r.record for r in live] + dropped

    def run(self) -> BenchmarkResult:
        environment = environment_info(self.device, self.settings.dtype)
        with torch.inference_mode():
            entries = self.build()
            ready, failures = self.runners(entries)
            timed = self.time_round_robin(ready)
        environment["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        records = sort_records(compare_with_vitpose(timed + failures))
        self.notes += self.flops.failures
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.settings).items()}
        return BenchmarkResult(environment, settings, records, self.notes)


def release_cuda_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def finish_timing(record: Record) -> None:
    record.ms_per_batch = statistics.median(record.times_ms)
    record.ms_min = min(record.times_ms)
    record.img_per_s = record.batch_size / record.ms_per_batch * 1e3


def compare_with_vitpose(records: list[Record]) -> list[Record]:
    """Speed-up over the ViTPose row of the same size, resolution, batch and mode, and, for SHaRPose,
    the FLOP-ratio limit at the achieved exit rate."""
    vitpose = {r.peer_key: r for r in records if r.family == "vitpose"}
    for record in records:
        peer = vitpose.get(record.peer_key)
        if peer is None:
            continue
        if record.img_per_s is not None and peer.img_per_s is not None:
            record.speedup_vs_vitpose = record.img_per_s / peer.img_per_s
        if record.ms_min is not None and peer.ms_min is not None:
            record.speedup_vs_vitpose_min = peer.ms_min / record.ms_min
        if record.family == "sharpose" and record.gflops_per_image and peer.gflops_per_image:
            record.flop_ratio_limit = flop_ratio_limit(peer.gflops_per_image, record.gflops_per_image)
    return records


def sort_records(records: list[Record]) -> list[Record]:
    family_order = {"vitpose": 0, "hf_vitpose": 1, "sharpose": 2}
    return sorted(records, key=lambda r: (
        RESOLUTIONS.index(r.resolution) if r.resolution in RESOLUTIONS else len(RESOLUTIONS), r.resolution,
        r.size, r.batch_size, MODES.index(r.mode), family_order[r.family], r.backend,
        TOKEN_BUDGETS.index(r.token_budget) if r.token_budget else -1,
        r.exit_rate if r.exit_rate is not None else -1.0,
    ))


def run_benchmark(settings: BenchmarkSettings) -> BenchmarkResult:
    """Run every case of `settings` and return the records with the environment."""
    if torch.device(settings.device).type == "cpu" and settings.dtype != "fp32":
        warnings.warn(f"{settings.dtype} on the CPU: low-precision CPU kernels are slow or emulated; "
                      "only fp32 is a meaningful CPU comparison", stacklevel=2)
    if torch.device(settings.device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # both families' convolutions pick their fastest algorithm
    return Benchmark(settings).run()
