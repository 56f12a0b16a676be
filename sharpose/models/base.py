"""What every pose model offers beside its forward: the attention backend and the early-exit policy, the
names of the outputs it fills, the grid its patch scores cover."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import ClassVar

import torch.nn as nn

from kernels import BACKENDS
from sharpose.models.layers import Attention


class PoseModel(nn.Module):
    """Base of SHaRPose and ViTPose. Subclasses return a `PoseOutput` from their forward."""

    # the PoseOutput fields an export (and a FLOP count's trace) returns, in order
    output_names: ClassVar[tuple[str, ...]] = ("heatmaps",)
    has_early_exit: ClassVar[bool] = False
    # early-exit threshold: a sample whose predicted quality reaches it skips the refinement; +inf: every
    # sample runs every stage (what a model without early exit always does)
    qp_threshold: float = math.inf
    _backend: str = "reference"  # Attention's default

    @property
    def score_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the patches `PoseOutput.patch_scores` covers; None when the model scores none."""
        return None

    @property
    def position_grids(self) -> dict[str, tuple[tuple[int, int], int]]:
        """Each position-embedding parameter: its patch grid (rows, cols) and how many extra slots come
        before the grid's positions."""
        return {}

    @property
    def backend(self) -> str:
        """The ops every attention layer runs on: "reference", "triton" or "auto" (see `kernels`)."""
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self._backend = backend
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = backend

    @contextlib.contextmanager
    def exit_policy(self, qp_threshold: float | None = None, backend: str | None = None) -> Iterator[PoseModel]:
        """Run under this early-exit threshold and attention backend (None: keep the current one); both are
        restored on leaving, also on an exception. A model without early exit runs its one stage whatever
        the threshold."""
        saved = (self.qp_threshold, self.backend)
        try:
            if qp_threshold is not None and self.has_early_exit:
                self.qp_threshold = qp_threshold
            if backend is not None:
                self.backend = backend
            yield self
        finally:
            if self.has_early_exit:
                self.qp_threshold = saved[0]
            self.backend = saved[1]
