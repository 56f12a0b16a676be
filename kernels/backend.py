"""Backend selection: the model asks for its ops by name and gets the plain-PyTorch
reference or the Triton kernels, with the same signatures."""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import re
from types import ModuleType

import torch

BACKENDS = ("reference", "triton", "auto")


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _version(package: str) -> tuple[int, int]:
    """(major, minor) of an installed package: "2.13.0+cpu" -> (2, 13), "3.7rc1" -> (3, 7)."""
    major, minor = re.match(r"(\d+)\.(\d+)", importlib.metadata.version(package)).groups()
    return int(major), int(minor)


@functools.cache
def _interpreter_incompatibility() -> str | None:
    """Why this triton's interpreter cannot run the kernels, or None.

    Up to triton 3.6 the interpreter turns a run-time int argument into a Python int with
    `int(array_of_shape_1)`, which numpy >= 2.4 refuses: every kernel that loops to a run-time
    length then fails deep inside the interpreter. Triton 3.7 fixed it.
    """
    if _version("triton") < (3, 7) and _version("numpy") >= (2, 4):
        return (
            f"the Triton interpreter of triton {importlib.metadata.version('triton')} cannot run with numpy "
            f"{importlib.metadata.version('numpy')} (it needs numpy < 2.4 or triton >= 3.7); "
            "install one of those, or use backend='reference' on the CPU"
        )
    return None


def check_kernel_device(device: torch.device, op: str) -> None:
    """Triton kernels run on CUDA devices, or on the CPU under a working interpreter; else say why not."""
    if device.type == "cuda":
        return
    if not interpreter_enabled():
        raise RuntimeError(
            f"{op} (Triton) got tensors on {device}; it runs on CUDA devices, or on the CPU with "
            "TRITON_INTERPRET=1 set before triton is imported (else use kernels.reference)"
        )
    reason = _interpreter_incompatibility()
    if reason:
        raise RuntimeError(f"{op}: {reason}")


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


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
        check_kernel_device(device, "backend='triton'")
    return backend


def ops_for(backend: str, device: torch.device) -> ModuleType:
    """The module holding the ops (`attention`, ...) of the resolved backend."""
    if resolve_backend(backend, device) == "triton":
        return importlib.import_module("kernels.triton_ops")
    return importlib.import_module("kernels.reference")
