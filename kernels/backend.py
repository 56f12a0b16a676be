"""Backend selection: the model asks for its ops by name and gets the plain-PyTorch
reference or the Triton kernels, with the same signatures."""
from __future__ import annotations

from types import ModuleType

import torch

from kernels import reference
from kernels.device import check_kernel_device, triton_installed

BACKENDS = ("reference", "triton", "auto")


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
    """The module holding the ops (`kernels.op_set.OPS`) of the resolved backend."""
    if resolve_backend(backend, device) == "triton":
        # imported on first use (it imports triton); an import statement, which torch.compile traces
        from kernels import triton_ops

        return triton_ops
    return reference
