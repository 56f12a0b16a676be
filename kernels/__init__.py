"""Triton kernels for SHaRPose, each next to a plain-PyTorch reference in `kernels.reference`.

`import kernels` does not import triton: the Triton ops load on first use, so the
TRITON_INTERPRET switch can still be set after this import.
"""
from __future__ import annotations

import importlib
from typing import Any

from kernels import reference
from kernels.backend import BACKENDS, ops_for, resolve_backend
from kernels.device import interpreter_enabled
from kernels.op_set import OPS

__all__ = ["BACKENDS", "interpreter_enabled", "ops_for", "reference", "resolve_backend", *OPS]


def __getattr__(name: str) -> Any:
    if name in OPS:
        op = globals()[name] = getattr(importlib.import_module("kernels.triton_ops"), name)  # found directly next time
        return op
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
