"""Host-device traffic of a piece of code, counted on the CPU: what would make a CUDA device wait.

`HostTraffic` records three kinds of event while active:
  uploads - tensors built from Python data (torch.tensor / as_tensor / asarray / from_numpy /
            new_tensor): on CUDA each is a pageable host-to-device copy that synchronises and cannot
            be recorded in a CUDA graph;
  reads   - values read back to the host (.item(), .tolist(), .numpy(), .cpu(), .to("cpu"),
            bool/int/float/index of a tensor, and any scalar read an op makes internally);
  syncs   - ops whose output size depends on tensor values (nonzero, masked_select, boolean-mask
            indexing, repeat_interleave without output_size).
Each event is "name at file:line" of the first caller outside torch and this module.

It is cheap: a TorchFunctionMode and a TorchDispatchMode that test the op's name and return; the
Python stack is only looked at for an event. The kernels' value checks run on CPU tensors only
(free there, skipped on a GPU); reads made inside a `_check_*_values` function are not counted.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

UPLOADS = {"tensor", "as_tensor", "asarray", "new_tensor"}
READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}
_TORCH_DIR = os.path.dirname(torch.__file__)


def _caller() -> str:
    """file:line of the innermost frame outside torch and this module."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_TORCH_DIR) and path != __file__:
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _in_cpu_only_validation() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_name
        if name.startswith("_check_") and name.endswith("_values"):
            return True
        frame = frame.f_back
    return False


def _to_cpu(args: tuple, kwargs: dict) -> bool:
    """Tensor.to(...) names the CPU as its target device."""
    targets = list(args[:1]) + [kwargs.get("device")]
    return any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets)


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, traffic: HostTraffic) -> None:
        super().__init__()
        self.traffic = traffic

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in UPLOADS:
            data = args[1] if name == "new_tensor" else (args[0] if args else kwargs.get("data"))
            if not isinstance(data, torch.Tensor):
                self.traffic.record("uploads", name)
        elif name in READS or (name == "to" and _to_cpu(args[1:], kwargs)):
            self.traffic.record("reads", name)
            self.traffic.in_read += 1  # the scalar read underneath is this same read
            try:
                return func(*args, **kwargs)
            finally:
                self.traffic.in_read -= 1
        return func(*args, **kwargs)


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, traffic: HostTraffic) -> None:
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__  # e.g. "nonzero.default"
        if name.startswith("_local_scalar_dense"):
            if not self.traffic.in_read:
                self.traffic.record("reads", name)
        elif name.startswith(("nonzero", "masked_select")):
            self.traffic.record("syncs", name)
        elif name.startswith("repeat_interleave") and kwargs.get("output_size") is None:
            self.traffic.record("syncs", name)
        elif name.startswith("index.Tensor") and any(t is not None and t.dtype == torch.bool for t in args[1]):
            self.traffic.record("syncs", "boolean-mask index")
        return func(*args, **kwargs)


class HostTraffic:
    """Context manager counting uploads from Python data, reads back and value-dependent sizes."""

    def __init__(self) -> None:
        self.uploads: list[str] = []
        self.reads: list[str] = []
        self.syncs: list[str] = []
        self.in_read = 0
        self._modes = (_FunctionLevel(self), _DispatchLevel(self))
        self._from_numpy: Callable | None = None

    def record(self, kind: str, name: str) -> None:
        if not _in_cpu_only_validation():
            getattr(self, kind).append(f"{name} at {_caller()}")

    def __enter__(self) -> HostTraffic:
        self._from_numpy = torch.from_numpy  # takes no tensor, so no torch mode sees it

        def from_numpy(array):
            self.record("uploads", "from_numpy")
            return self._from_numpy(array)

        torch.from_numpy = from_numpy
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        torch.from_numpy = self._from_numpy

    @property
    def events(self) -> list[str]:
        return self.uploads + self.reads + self.syncs
