"""The benchmark's vocabulary: model names, sizes, modes and dtypes; the settings of a run; one record per
case and the result of a run; the record of a case that cannot run."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("eager", "cuda_graph", "compile", "train")  # "train": a training step (training_step.py)
TOKEN_BUDGETS = ("fixed", "adaptive")
SIZES = ("small", "base")
RESOLUTIONS = ("256x192", "384x288")
MODEL_NAME = re.compile(r"^(?P<family>sharpose|vitpose)_(?P<size>small|base)_(?P<resolution>\d+x\d+)$")
# a tiny configuration for tests and smoke runs: both model families, one block, narrow
TINY_OVERRIDES = {"embed_dim": 64, "depth": 1, "num_heads": 2}


class Unavailable(Exception):
    """The case cannot run here (a kernel not written yet, a mode this model does not support)."""


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
    mode: str  # "eager" | "cuda_graph" | "compile" | "train"
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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def failed(record: Record, error: BaseException) -> Record:
    """The record of a case that could not run, with the reason."""
    if isinstance(error, (Unavailable, NotImplementedError)):
        return replace(record, status="unavailable", reason=first_line(error) or type(error).__name__)
    return replace(record, status="error", reason=f"{type(error).__name__}: {first_line(error)}")
