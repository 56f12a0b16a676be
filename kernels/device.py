"""Where the Triton kernels can run (CUDA devices, or the CPU under the Triton interpreter) and
how the host launches them there.

Shared by the three Triton ops and by the backend switch; imports neither (a leaf module).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

# The dtypes the kernels compute in. The interpreter runs them through numpy, which has no
# bfloat16: bf16 there gives garbage, so it is refused on the CPU.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRETER_DTYPES = (torch.float32, torch.float16)


# Known once computed. Module state rather than functools.cache, which torch.compile warns about
# when it traces the model's calls into these checks.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_interpreter_verdict: list[str | None] = []


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _version(package: str) -> tuple[int, int]:
    """(major, minor) of an installed package: "2.13.0+cpu" -> (2, 13), "3.7rc1" -> (3, 7)."""
    major, minor = re.match(r"(\d+)\.(\d+)", importlib.metadata.version(package)).groups()
    return int(major), int(minor)


def _interpreter_incompatibility() -> str | None:
    """Why this triton's interpreter cannot run the kernels, or None. Worked out on the first launch
    on the CPU, which also drops the interpreter's unread overflow checks (`skip_unread_overflow_checks`).

    Up to triton 3.6 the interpreter turns a run-time int argument into a Python int with
    `int(array_of_shape_1)`, which numpy >= 2.4 refuses: every kernel that loops to a run-time
    length then fails deep inside the interpreter. Triton 3.7 fixed it.
    """
    if not _interpreter_verdict:
        problem = None
        if _version("triton") < (3, 7) and _version("numpy") >= (2, 4):
            problem = (
                f"the Triton interpreter of triton {importlib.metadata.version('triton')} cannot run with numpy "
                f"{importlib.metadata.version('numpy')} (it needs numpy < 2.4 or triton >= 3.7); "
                "install one of those, or use backend='reference' on the CPU"
            )
        else:
            from triton.runtime import interpreter

            skip_unread_overflow_checks(interpreter)
        _interpreter_verdict.append(problem)
    return _interpreter_verdict[0]


def skip_unread_overflow_checks(interpreter: object) -> None:
    """Stop the Triton interpreter (`triton.runtime.interpreter`) computing overflow checks that
    nothing reads.

    The interpreter wraps every integer +, - and * of a kernel in an overflow check: both operands
    cast to int64, the operation done again, the result compared with the type's bounds and the
    verdict handed to `device_assert`, which drops it unless the interpreter runs in debug mode
    (it does not by default; compiled kernels leave the checks out too). That dead work was about
    40% of an attention kernel's time under the interpreter. Where debug mode is on, the checks stay.
    A triton whose interpreter has no such options is left as it is.
    """
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if not dataclasses.is_dataclass(options) or getattr(options, "debug", True):
        return
    if getattr(options, "sanitize_overflow", False):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)


def check_kernel_device(device: torch.device, op: str, dtype: torch.dtype | None = None) -> None:
    """Triton kernels run on CUDA devices, or on the CPU under a working interpreter; else say why not.

    With `dtype`, also refuse what the interpreter cannot compute (bfloat16)."""
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
    if dtype is not None and dtype not in INTERPRETER_DTYPES:
        raise ValueError(
            f"{op} (Triton interpreter, CPU) does not support {dtype}: the interpreter computes in numpy, "
            "which has no bfloat16; use float32 or float16 on the CPU, bfloat16 on a CUDA device, "
            "or kernels.reference"
        )


Checked = TypeVar("Checked")


class CheckedSignatures(Generic[Checked]):
    """An op's argument checks and launch choices, kept per call signature.

    The model calls each op with a few signatures (shapes, dtypes, devices, static arguments), so
    `get(signature, check, *args)` runs `check(*args)` (which raises on bad arguments, and includes
    `check_kernel_device`) when the signature is new and returns its result; afterwards the same
    signature costs one dictionary lookup. The one condition no signature holds, the interpreter
    switch for CPU tensors, is read on every call. A signature must hold everything `check` reads;
    an unhashable one (an argument of a type no op accepts) goes to `check`, which names it.
    """

    def __init__(self, op: str, max_entries: int = 1024) -> None:
        self.op = op
        self.max_entries = max_entries
        self._entries: dict[Hashable, Checked] = {}

    def get(self, signature: Hashable, check: Callable[..., Checked], *args: torch.Tensor) -> Checked:
        try:
            checked = self._entries.get(signature)
        except TypeError:  # unhashable: `check` raises, saying which argument is wrong
            return check(*args)
        if checked is None:
            checked = check(*args)
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[signature] = checked
        elif not args[0].is_cuda and not interpreter_enabled():
            check_kernel_device(args[0].device, self.op, args[0].dtype)  # raises: the interpreter was switched off
        return checked


_NO_GUARD = contextlib.nullcontext()


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's GPU (Triton launches on the current device); nothing to do when it is current."""
    if not t.is_cuda:  # (a tensor attribute: `t.device.type` builds a string on every call)
        return _NO_GUARD
    device = t.device
    return _NO_GUARD if device.index == torch.cuda.current_device() else torch.cuda.device(device)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids: `triton.cdiv` is a constexpr function, microseconds per host call."""
    return -(-a // b)
