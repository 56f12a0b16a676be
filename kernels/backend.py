"""Backend selection: the model asks for its ops by name and gets the plain-PyTorch
reference or the Triton kernels, with the same signatures."""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

BACKENDS = ("reference", "triton", "auto")


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "reference" | "triton" | "auto" to the backend that will run on `device`.

    "auto" picks Triton on CUDA devices only. An explicit "triton" on CPU tensors runs the
    kernels under the Triton interpreter, which must be switched on before triton is imported.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_installed() else "reference"
    if backend == "triton":
        if not triton_installed():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and not interpreter_enabled():
            raise RuntimeError(
                f"backend='triton' got tensors on {device}; Triton kernels run on CUDA devices, "
                "or on the CPU with TRITON_INTERPRET=1 set before triton is imported"
            )
    return backend


def ops_for(backend: str, device: torch.device) -> ModuleType:
    """The module holding the ops (`attention`, ...) of the resolved backend."""
    if resolve_backend(backend, device) == "triton":
        return importlib.import_module("kernels.triton_ops")
    return importlib.import_module("kernels.reference")
