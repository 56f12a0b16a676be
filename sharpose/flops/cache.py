"""FLOP arithmetic: SHaRPose's mean cost at an exit rate, the FLOP-ratio limit, and the fvcore counts per
configuration (cached, keyed by a hash of the model code), with the released code's counts as fallback."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from sharpose.flops.counting import count_gflops
from sharpose.flops.published import published_gflops
from sharpose.models import PoseModel


def mean_gflops(full: float, coarse: float, exit_rate: float) -> float:
    """SHaRPose's mean cost per image when a fraction `exit_rate` exits after the coarse stage."""
    return coarse + (1.0 - exit_rate) * (full - coarse)


def flop_ratio_limit(vitpose_gflops: float, sharpose_gflops: float) -> float:
    """Speed-up over ViTPose that SHaRPose would reach if run time were proportional to FLOPs."""
    return vitpose_gflops / sharpose_gflops


def source_fingerprint() -> str:
    """Hash of the code a FLOP count depends on: cached counts go stale when it changes."""
    root = Path(__file__).resolve().parent.parent  # the sharpose package
    files = sorted((root / "models").glob("*.py"))
    files += [root / "flops" / "counting.py", root.parent / "kernels" / "reference.py"]
    digest = hashlib.sha256()
    for path in files:
        if path.exists():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


class FlopCounter:
    """fvcore GFLOPs per image, cached per configuration, in memory and optionally in a JSON file.

    Without fvcore (e.g. on the GPU image), the named default configurations fall back to the
    released code's counts (`sharpose.flops.published`), and the source is reported as such.
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

    def gflops(self, name: str, overrides: dict[str, Any], model: PoseModel, refine: bool = True) -> float | None:
        """GFLOPs of one image through `model` (a CPU float32 instance of `name` with `overrides`)."""
        key = json.dumps([name, sorted(overrides.items()), refine], default=str)
        if key in self.entries:
            return self.entries[key]
        if not self.fvcore_available():
            return published_gflops(name, overrides, refine)
        try:
            count = count_gflops(model, refine=refine)
        except Exception as error:  # noqa: BLE001 - a failed trace costs the GFLOPs column, not the run
            from sharpose.benchmark.records import first_line  # here: sharpose.benchmark imports this module

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


def default_flop_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "sharpose" / "flops.json"
