"""Triton kernels for SHaRPose, each next to a plain-PyTorch reference in `kernels.reference`.

`import kernels` does not import triton: the Triton ops load on first use, so the
TRITON_INTERPRET switch can still be set after this import.
"""
from __future__ import annotations

import importlib
from typing import Any

from kernels import reference
from kernels.backend import BACKENDS, interpreter_enabled, ops_for, resolve_backend

__all__ = ["BACKENDS", "interpreter_enabled", "ops_for", "reference", "resolve_backend", "attention", "compose_tokens",
           "compose_tokens_padded", "varlen_attention"]

_TRITON_OPS = {
    "attention": "kernels.fused_attention",
    "compose_tokens": "kernels.token_composition",
    "compose_tokens_padded": "kernels.token_composition",
    "varlen_attention": "kernels.varlen_fused_attention",
}


def __getattr__(name: str) -> Any:
    if name in _TRITON_OPS:
        return getattr(importlib.import_module(_TRITON_OPS[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")

