"""Throughput of SHaRPose against ViTPose, side by side: the logic behind `bench/throughput.py`.

What is measured, per (model, backend, mode, resolution, batch, exit rate): images per second, ms per
batch, peak memory, GFLOPs per image (fvcore), mean tokens per image, the speed-up over ViTPose of
the same size and resolution measured in the same run, and the FLOP-ratio limit (the speed-up a
SHaRPose row would reach if time scaled with FLOPs).

How
- Random weights. Early exit is controlled by calibrating `qp_threshold` on the benchmark batch
  (`threshold_for_exit_rate`) and checked against the model's own `out.refined`.
- Precision: the model and the batch are converted to the dtype (`model.to(dtype)`), the way an
  inference deployment runs; autocast would re-cast the weights on every call and keep some ops in
  fp32, which measures something else. On the CPU only fp32 is meaningful.
- Timing: each timing is one forward under `torch.inference_mode()`, started on an idle device (CUDA
  events after a synchronize on GPU, `perf_counter` on CPU); warm-up rounds first; every case runs once
  per round, round-robin, so that drift (clocks, other load) hits all of them alike; the median round is
  reported, and the fastest one beside it.
- GFLOPs: fvcore on a CPU float32 copy of each configuration, cached per configuration (optionally in a
  JSON file keyed by a hash of the model code). SHaRPose's figure is the mean over the achieved exit rate.
- Token budget: SHaRPose's `token_budget` ("fixed" | "adaptive") is passed to `create_model`; tokens per
  image are counted from the model's outputs (`selected`, `refined`), so an adaptive budget reports its
  own mean. GFLOPs are not given for it (its cost depends on the image, fvcore traces one).
- Peak memory (CUDA only): the `max_memory_allocated` rise during one eager forward, plus the model's
  own weights and the input batch. On the CPU the process's peak RSS cannot be attributed to one of the
  interleaved models, so none is reported.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from sharpose.models.factory import create_model
from sharpose.models.heads import SimpleDecoder
from sharpose.models.sharpose import SHaRPose
from sharpose.models.vitpose import ViTPose
from sharpose.published import RELEASED_SHARPOSE, RELEASED_VITPOSE

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("eager", "cuda_graph", "compile")
TOKEN_BUDGETS = ("fixed", "adaptive")
SIZES = ("small", "base")
RESOLUTIONS = ("256x192", "384x288")
MODEL_NAME = re.compile(r"^(?P<family>sharpose|vitpose)_(?P<size>small|base)_(?P<resolution>\d+x\d+)$")
# a tiny configuration for tests and smoke runs: both model families, one block, narrow
TINY_OVERRIDES = {"embed_dim": 64, "depth": 1, "num_heads": 2}


class Unavailable(Exception):
    """The case cannot run here (a kernel not written yet, a mode this model does not support)."""


# ----------------------------------------------------------------------------- exit-rate calibration


def threshold_for_exit_rate(quality: torch.Tensor, rate: float) -> float:
    """The `qp_threshold` at which round(rate * B) of these samples exit (Q >= threshold), or as
    close as ties allow (closest count; on equal distance, fewer exits).

    The threshold is one of the quality values itself (or +-inf), so comparing it with a bf16/fp16
    quality tensor is exact: a value between two neighbours could round onto one of them.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"exit rate must be in [0, 1], got {rate}")
    values = quality.detach().flatten().double().cpu()
    if not torch.isfinite(values).all():
        raise ValueError("quality holds NaN or inf values; no threshold gives a defined exit rate")
    wanted = round(rate * values.numel())
    if wanted == 0:
        return math.inf
    if wanted == values.numel():
        return -math.inf
    distinct, counts = torch.unique(values, return_counts=True)  # ascending
    exits_at = counts.flip(0).cumsum(0).flip(0)  # threshold distinct[i] lets every value >= it exit
    candidates = [(0, math.inf)] + [(int(n), float(v)) for n, v in zip(exits_at, distinct)]
    return min(candidates, key=lambda c: (abs(c[0] - wanted), c[0]))[1]


def exit_fraction(refined: torch.Tensor) -> float:
    """Fraction of the batch that exited after the coarse stage, from the model's own `out.refined`."""
    return 1.0 - refined.float().mean().item()


def sharpose_tokens_per_image(model: SHaRPose, out: Any) -> float:
    """Mean transformer tokens per image over both stages, from the model's outputs: the coarse
    sequence [quality, keypoints, coarse patches] for every sample, plus, for refined samples, the fine
    sequence [keypoints, 4 children of each selected patch, the other coarse patches]."""
    coarse = 1 + model.num_keypoints + model.num_coarse
    selected = (out.selected >= 0).sum(1).double()
    fine = (model.num_keypoints + model.num_coarse + 3 * selected) * out.refined.double()
    return coarse + fine.mean().item()


# ----------------------------------------------------------------------------- FLOP arithmetic


def mean_gflops(full: float, coarse: float, exit_rate: float) -> float:
    """SHaRPose's mean cost per image when a fraction `exit_rate` exits after the coarse stage."""
    return coarse + (1.0 - exit_rate) * (full - coarse)


def flop_ratio_limit(vitpose_gflops: float, sharpose_gflops: float) -> float:
    """Speed-up over ViTPose that SHaRPose would reach if run time were proportional to FLOPs."""
    return vitpose_gflops / sharpose_gflops


def source_fingerprint() -> str:
    """Hash of the code a FLOP count depends on: cached counts go stale when it changes."""
    root = Path(__file__).resolve().parent
    files = sorted((root / "models").glob("*.py")) + [root / "flops.py", root.parent / "kernels" / "reference.py"]
    digest = hashlib.sha256()
    for path in files:
        if path.exists():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


class FlopCounter:
    """fvcore GFLOPs per image, cached per configuration, in memory and optionally in a JSON file.

    Without fvcore (e.g. on the GPU image), the named default configurations fall back to the
    released code's counts (`sharpose.published`), and the source is reported as such.
    """

    def __init__(self, cache_path: Path | None = None) -> None:
        self.cache_path = cache_path
        self.fingerprint = source_fingerprint()
        self.entries: dict[str, float] = {}
        self.failures: list[str] = []
        if cache_path is not None and cache_path.exists():
            try:
                stored = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                stored = {}
            if stored.get("fingerprint") == self.fingerprint:
                self.entries = stored.get("entries", {})

    @staticmethod
    def fvcore_available() -> bool:
        return importlib.util.find_spec("fvcore") is not None

    def source(self) -> str:
        return "fvcore" if self.fvcore_available() else "released code (fvcore not installed)"

    def gflops(self, name: str, overrides: dict[str, Any], model: nn.Module, refine: bool = True) -> float | None:
        """GFLOPs of one image through `model` (a CPU float32 instance of `name` with `overrides`)."""
        key = json.dumps([name, sorted(overrides.items()), refine], default=str)
        if key in self.entries:
            return self.entries[key]
        if not self.fvcore_available():
            return published_gflops(name, overrides, refine)
        from sharpose.flops import count_gflops

        try:
            count = count_gflops(model, refine=refine) if isinstance(model, SHaRPose) else count_gflops(model)
        except Exception as error:  # noqa: BLE001 - a failed trace costs the GFLOPs column, not the run
            self.failures.append(f"fvcore could not count {name} (refine={refine}): {type(error).__name__}: "
                                 f"{first_line(error)}")
            return None
        self.entries[key] = count
        self._save()
        return count

    def _save(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.cache_path.write_text(json.dumps({"fingerprint": self.fingerprint, "entries": self.entries}, indent=1))


def published_gflops(name: str, overrides: dict[str, Any], refine: bool) -> float | None:
    if overrides:
        return None
    if name in RELEASED_SHARPOSE:
        return RELEASED_SHARPOSE[name][1 if refine else 2]
    if (name, "classic") in RELEASED_VITPOSE:
        return RELEASED_VITPOSE[(name, "classic")][1]
    return None


def default_flop_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "sharpose" / "flops.json"


# ----------------------------------------------------------------------------- settings and records


@dataclass
class BenchmarkSettings:
    models: list[str]  # registry names (sharpose_* and vitpose_*)
    device: str = "cpu"
    dtype: str = "fp32"
    batch_sizes: list[int] = field(default_factory=lambda: [8])
    exit_rates: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.6])
    warmup: int = 1
    iters: int = 5
    backends: list[str] = field(default_factory=lambda: ["reference"])  # SHaRPose backends
    modes: list[str] = field(default_factory=lambda: ["eager"])
    token_budgets: list[str] = field(default_factory=lambda: ["fixed"])
    hf_peer: bool = True  # the transformers VitPose as an outside peer, when importable
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. TINY_OVERRIDES, for every model
    flop_cache: Path | None = None
    seed: int = 0
    progress: bool = True


@dataclass
class Record:
    model: str
    family: str  # "sharpose" | "vitpose" | "hf_vitpose"
    size: str
    resolution: str
    backend: str  # SHaRPose: "reference" | "triton"; ViTPose: "sdpa"; HF: "hf-sdpa" | "hf-eager"
    mode: str  # "eager" | "cuda_graph" | "compile"
    token_budget: str | None  # SHaRPose only
    batch_size: int
    dtype: str
    device: str
    exit_rate: float | None = None  # requested (SHaRPose only)
    achieved_exit_rate: float | None = None  # from the model's own out.refined
    qp_threshold: float | None = None
    status: str = "ok"  # "ok" | "unavailable" | "error"
    reason: str | None = None
    times_ms: list[float] = field(default_factory=list)  # wall time of each timed round
    ms_per_batch: float | None = None  # median of times_ms
    # the fastest round: other load only ever adds time, so on a shared machine the minimum is the
    # steadier figure where the median is thrown by bursts of other processes
    ms_min: float | None = None
    img_per_s: float | None = None
    peak_mem_mib: float | None = None
    gflops_per_image: float | None = None  # SHaRPose: mean over the achieved exit rate
    gflops_source: str | None = None
    tokens_per_image: float | None = None
    speedup_vs_vitpose: float | None = None
    speedup_vs_vitpose_min: float | None = None  # the same from the fastest rounds (ms_min)
    flop_ratio_limit: float | None = None

    @property
    def peer_key(self) -> tuple:
        """Rows sharing this key are compared with each other (speed-up vs the ViTPose row)."""
        return (self.size, self.resolution, self.batch_size, self.mode)


@dataclass
class BenchmarkResult:
    environment: dict[str, Any]
    settings: dict[str, Any]
    records: list[Record]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "settings": self.settings,
            "records": [asdict(r) for r in self.records],
            "notes": self.notes,
        }


def parse_model_name(name: str) -> tuple[str, str, str]:
    """'sharpose_base_256x192' -> ('sharpose', 'base', '256x192')."""
    match = MODEL_NAME.match(name)
    if match is None:
        raise ValueError(f"unknown model {name!r}: expected (sharpose|vitpose)_(small|base)_HxW")
    return match["family"], match["size"], match["resolution"]


def select_models(size: str = "base", resolutions: Sequence[str] = RESOLUTIONS) -> list[str]:
    """SHaRPose and ViTPose of the given size ('small' | 'base' | 'all') at each resolution."""
    sizes = SIZES if size == "all" else (size,)
    if not set(sizes) <= set(SIZES):
        raise ValueError(f"size must be one of {SIZES + ('all',)}, got {size!r}")
    return [f"{family}_{s}_{res}" for s in sizes for res in resolutions for family in ("vitpose", "sharpose")]


# ----------------------------------------------------------------------------- environment


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """Short commit of the checkout this module lives in, '+dirty' when the tree has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment_info(device: torch.device, dtype: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "dtype": dtype,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
        "python": platform.python_version(),
        "commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            matmul_fp32_precision=torch.get_float32_matmul_precision(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        )
    return info


# ----------------------------------------------------------------------------- models and runners


class HFVitPose(nn.Module):
    """transformers' VitPoseForPoseEstimation behind our ViTPose's interface (images -> heatmaps)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int], in_chans: int) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.in_chans = in_chans

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).heatmaps


def hf_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def build_hf_vitpose(ours: ViTPose) -> tuple[HFVitPose, str]:
    """transformers' VitPose with our ViTPose's architecture (random weights) and its attention
    implementation name: SDPA where the backbone takes it (the pose model itself does not declare it)."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    depth = len(ours.blocks)
    backbone = VitPoseBackboneConfig(
        image_size=list(ours.input_size),
        patch_size=[ours.patch_embed.patch_size] * 2,
        num_channels=ours.in_chans,
        hidden_size=ours.norm.normalized_shape[0],
        num_hidden_layers=depth,
        num_attention_heads=ours.blocks[0].attn.num_heads,
        mlp_ratio=ours.blocks[0].mlp.fc1.out_features // ours.norm.normalized_shape[0],
        layer_norm_eps=ours.norm.eps,
        out_indices=[depth],
    )
    config = VitPoseConfig(
        backbone_config=backbone,
        use_simple_decoder=isinstance(ours.decoder, SimpleDecoder),
        num_labels=ours.num_keypoints,
    )
    model = VitPoseForPoseEstimation(config)
    try:
        model.backbone.set_attn_implementation("sdpa")
        attention = "hf-sdpa"
    except (ValueError, AttributeError):
        attention = "hf-eager"
    return HFVitPose(model, ours.input_size, ours.in_chans), attention


@dataclass
class Runner:
    """One timed case: `configure` (untimed: backend, threshold) then `call` (one forward)."""

    record: Record
    call: Callable[[], Any]
    configure: Callable[[], None] = lambda: None


def time_call(call: Callable[[], Any], device: torch.device) -> float:
    """Wall milliseconds of one call started on an idle device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    call()
    return (time.perf_counter() - start_s) * 1e3


def resident_bytes(model: nn.Module, images: torch.Tensor) -> int:
    tensors = list(model.parameters()) + list(model.buffers()) + [images]
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_memory_mib(call: Callable[[], Any], device: torch.device, resident: int) -> float | None:
    """Peak CUDA memory of one forward: its allocation high-water mark plus what it keeps resident."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before + resident) / 2**20


def capture_cuda_graph(call: Callable[[], Any]) -> Callable[[], Any]:
    """Record `call` into a CUDA graph; raises Unavailable when the forward cannot be captured
    (SHaRPose synchronises with the host on how many samples refine)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            call()
        torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - any capture failure means "not capturable"
        raise Unavailable(f"CUDA graph capture failed: {type(error).__name__}: {first_line(error)}") from error
    return graph.replay


def with_mode(call: Callable[[], Any], model: nn.Module, images: torch.Tensor, mode: str) -> Callable[[], Any]:
    if mode == "eager":
        return call
    if mode == "cuda_graph":
        if images.device.type != "cuda":
            raise Unavailable("CUDA graphs need a CUDA device")
        return capture_cuda_graph(call)
    if mode == "compile":
        # static shapes: each case (batch, number of refined samples, threshold) gets its own graph, compiled
        # right here, instead of a dynamic-shape recompilation landing in another case's timed rounds; and
        # enough room for all of them rather than a silent fall-back to eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        compiled = torch.compile(model, dynamic=False)
        compiled(images)  # compiles here, so that a failure is reported as this case's
        return lambda: compiled(images)
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def failed(record: Record, error: BaseException) -> Record:
    """The record of a case that could not run, with the reason."""
    if isinstance(error, (Unavailable, NotImplementedError)):
        return replace(record, status="unavailable", reason=first_line(error) or type(error).__name__)
    return replace(record, status="error", reason=f"{type(error).__name__}: {first_line(error)}")


# ----------------------------------------------------------------------------- the benchmark


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

    def build_entry(self, name: str, family: str, size: str, resolution: str, budget: str | None) -> Entry:
        entry = Entry(name, family, size, resolution, None, token_budget=budget)
        overrides = dict(self.settings.model_overrides)
        if budget == "adaptive":
            overrides["token_budget"] = "adaptive"
        torch.manual_seed(self.settings.seed)
        try:
            model = create_model(name, **overrides).eval()
        except (ValueError, TypeError) as error:
            entry.error = Unavailable(f"create_model({name!r}, **{overrides}) failed: {first_line(error)}")
            return entry
        if budget != "adaptive":  # an adaptive budget's cost depends on the image; fvcore sees one
            entry.gflops = self.flops.gflops(name, overrides, model, refine=True)
            if family == "sharpose":
                entry.coarse_gflops = self.flops.gflops(name, overrides, model, refine=False)
        if isinstance(model, ViTPose):
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
            model.backend = backend
            model.qp_threshold = math.inf
            quality = model(images).quality
        except Exception as error:  # noqa: BLE001 - e.g. NotImplementedError from a kernel not written yet
            failures.extend(failed(r, error) for r in records)
            release_cuda_memory(self.device)
            return
        call = lambda: model(images)  # noqa: E731
        for record in records:
            threshold = threshold_for_exit_rate(quality, record.exit_rate)

            def configure(threshold: float = threshold) -> None:
                model.backend, model.qp_threshold = backend, threshold

            try:
                configure()
                out = model(images)
                self.fill_sharpose_record(record, entry, model, out, threshold)
                configure()
                record.peak_mem_mib = peak_memory_mib(call, self.device, resident_bytes(model, images))
                configure()  # capture or compile with this case's threshold
                ready.append(Runner(record, with_mode(call, model, images, mode), configure))
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
                        runner.configure()
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


# ----------------------------------------------------------------------------- writers


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_ms(record: Record) -> str:
    if record.ms_per_batch is None:
        return "-"
    return f"{record.ms_per_batch:.1f} ({record.ms_min:.1f})"


def format_speedup(record: Record) -> str:
    if record.speedup_vs_vitpose is None:
        return "-"
    return f"{record.speedup_vs_vitpose:.2f} ({record.speedup_vs_vitpose_min:.2f})"


def format_exit(record: Record) -> str:
    if record.exit_rate is None:
        return "-"
    achieved = fmt(record.achieved_exit_rate, ".2f")
    return f"{record.exit_rate:.2f}" + ("" if achieved == f"{record.exit_rate:.2f}" else f" ({achieved})")


def format_header(result: BenchmarkResult) -> str:
    env = result.environment
    lines = [
        f"device: {env['device_name']} ({env['device']}), dtype {env['dtype']}, torch {env['torch']}, "
        f"triton {env['triton'] or '-'}, transformers {env['transformers'] or '-'}",
        f"date: {env['date_utc']}, commit {env['commit'] or '-'}, torch threads {env['torch_threads']}",
    ]
    if env["device"] == "cpu" and env.get("load_average_at_end"):
        start, end = (", ".join(f"{x:.1f}" for x in env[k]) for k in ("load_average_at_start", "load_average_at_end"))
        lines.append(f"load average (1, 5, 15 min) at start {start}, at end {end}, on {env['cpu_count']} cores: "
                     "other processes only add time, see the (min) figures")
    if result.settings.get("model_overrides"):
        lines.append(f"every model built with overrides {result.settings['model_overrides']} (not the named sizes)")
    return "\n".join(lines)


TABLE_COLUMNS = (
    "model", "backend", "mode", "budget", "batch", "exit rate (achieved)", "img/s", "ms/batch (min)", "peak MiB",
    "GFLOPs/img", "tokens/img", "speed-up vs ViTPose (min)", "FLOP-ratio limit", "status",
)


def format_table(records: Sequence[Record]) -> str:
    """Markdown table of the records (times and speed-ups: from the median round, and in brackets from
    the fastest); reasons of unavailable or failed rows are listed below it."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    reasons: list[str] = []
    for r in records:
        status = r.status
        if r.reason:
            reasons.append(r.reason)
            status += f" [{len(reasons)}]"
        cells = (
            r.model, r.backend, r.mode, r.token_budget or "-", str(r.batch_size), format_exit(r),
            fmt(r.img_per_s, ".1f"), format_ms(r), fmt(r.peak_mem_mib, ".0f"),
            fmt(r.gflops_per_image, ".2f"), fmt(r.tokens_per_image, ".1f"), format_speedup(r),
            fmt(r.flop_ratio_limit, ".2f"), status,
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"[{i}] {reason}" for i, reason in enumerate(reasons, 1)]
    return "\n".join(lines)


def write_json(result: BenchmarkResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")


def plot(result: BenchmarkResult, path: Path) -> None:
    """Throughput against exit rate, one panel per (size, resolution) and batch: SHaRPose per backend and
    mode, ViTPose (and the HF peer) as horizontal references, and the FLOP-ratio limit (ViTPose's
    throughput times the FLOP ratio) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.records if r.status == "ok"]
    panels = sorted({(r.size, r.resolution, r.batch_size) for r in ok},
                    key=lambda p: (SIZES.index(p[0]), p[1], p[2]))
    if not panels:
        raise ValueError("no successful records to plot")
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    for ax, (size, resolution, batch) in zip(axes.flat, panels):
        plot_panel(ax, [r for r in ok if (r.size, r.resolution, r.batch_size) == (size, resolution, batch)])
        ax.set_title(f"{size} {resolution}, batch {batch}")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    env = result.environment
    fig.suptitle(f"{env['device_name']}, {env['dtype']}, torch {env['torch']}, {env['date_utc']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_panel(ax: Any, records: list[Record]) -> None:
    rates = sorted({r.achieved_exit_rate for r in records if r.achieved_exit_rate is not None}) or [0.0, 1.0]
    span = (min(rates), max(rates)) if len(rates) > 1 else (rates[0] - 0.05, rates[0] + 0.05)
    for r in records:
        if r.family != "sharpose":
            style = "--" if r.family == "vitpose" else ":"
            name = "ViTPose" if r.family == "vitpose" else "HF VitPose"
            ax.hlines(r.img_per_s, *span, linestyles=style, colors="black" if r.family == "vitpose" else "gray",
                      label=f"{name} {r.backend} {r.mode}")
    series: dict[tuple, list[Record]] = {}
    for r in records:
        if r.family == "sharpose":
            series.setdefault((r.backend, r.mode, r.token_budget), []).append(r)
    for (backend, mode, budget), points in series.items():
        points.sort(key=lambda r: r.achieved_exit_rate)
        label = f"SHaRPose {backend} {mode}" + (f" {budget}" if budget != "fixed" else "")
        ax.plot([p.achieved_exit_rate for p in points], [p.img_per_s for p in points], "o-", label=label)
    limit = sorted((r for r in records if r.family == "sharpose" and r.flop_ratio_limit and r.mode == "eager"
                    and r.backend == "reference"), key=lambda r: r.achieved_exit_rate)
    vitpose = next((r for r in records if r.family == "vitpose" and r.mode == "eager"), None)
    if limit and vitpose is not None:
        ax.plot([r.achieved_exit_rate for r in limit], [vitpose.img_per_s * r.flop_ratio_limit for r in limit],
                "k-.", alpha=0.6, label="FLOP-ratio limit (ViTPose img/s x FLOP ratio)")
    ax.set_xlabel("exit rate (achieved)")
    ax.set_ylabel("images / s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
