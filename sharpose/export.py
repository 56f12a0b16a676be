"""Export of SHaRPose / ViTPose to ONNX, TorchScript or a torch.export ExportedProgram, verified against
the eager model.

SHaRPose is exported with a fixed exit policy, every sample refined (qp_threshold = inf, eval mode): its
forward then has no data-dependent control flow and no host-device sync. On the Triton backend the
kernels are recorded as calls to the registered ops `torch.ops.sharpose.*` (import `kernels.triton_ops`
before loading such a file); ONNX cannot hold them. Shapes are static: the batch size is fixed at export time.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels import resolve_backend
from sharpose.models import PoseModel, TupleOutputs

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
ONNX_OPSET = 17


class ExportError(RuntimeError):
    """An export that cannot run (a missing package) or whose result differs from the eager model."""


def exportable(model: PoseModel) -> TupleOutputs:
    """`model` in eval mode on the CPU, every sample refined, on its own backend."""
    return TupleOutputs(model.eval().cpu(), qp_threshold=math.inf).eval()


def runs_triton_kernels(model: PoseModel) -> bool:
    """The model's backend resolves to the Triton kernels on the CPU (under the interpreter)."""
    return resolve_backend(model.backend, torch.device("cpu")) == "triton"


def check_onnx_available() -> None:
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"--format onnx needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def example_images(model: PoseModel, batch_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, model.in_chans, *model.input_size, generator=generator)


@torch.no_grad()
def export(wrapped: TupleOutputs, images: torch.Tensor, fmt: str, path: Path) -> None:
    """Trace / export `wrapped` on `images` and write it to `path` in format `fmt` (see FORMATS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # every Python-level shape check warns
        warnings.filterwarnings("ignore", module=r"torch\.onnx")  # the legacy exporter's notes, chosen below
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(wrapped, images, check_trace=False), str(path))
        elif fmt == "exported-program":
            with open(path, "wb") as f:  # a file object: any file name, not only *.pt2
                torch.export.save(torch.export.export(wrapped, (images,)), f)
        elif fmt == "onnx":
            if runs_triton_kernels(wrapped.model):
                raise ExportError("--format onnx cannot hold the Triton kernels (torch.ops.sharpose.* ops); use "
                                  "--format exported-program or torchscript, or --set backend=reference")
            check_onnx_available()
            # the TorchScript-based exporter: the dynamo one (onnxscript 0.7) cannot translate
            # repeat_interleave with output_size, which the fine stage's packing uses
            torch.onnx.export(wrapped, (images,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["images"], output_names=list(wrapped.output_names))
        else:
            raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")


def run_exported(fmt: str, path: Path, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Load the file written by `export` and run it on `images`."""
    if fmt == "torchscript":
        with torch.no_grad():
            return tuple(torch.jit.load(str(path))(images))
    if fmt == "exported-program":
        with open(path, "rb") as f, torch.no_grad():
            return tuple(torch.export.load(f).module()(images))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(torch.from_numpy(out) for out in session.run(None, {"images": images.numpy()}))


@dataclass
class Verification:
    names: tuple[str, ...]
    max_abs_diff: tuple[float, ...]  # per output, exported vs eager

    def worst(self) -> tuple[str, float]:
        i = max(range(len(self.names)), key=lambda j: self.max_abs_diff[j])
        return self.names[i], self.max_abs_diff[i]


@torch.no_grad()
def verify(wrapped: TupleOutputs, fmt: str, path: Path, images: torch.Tensor) -> Verification:
    """Max |exported - eager| of each output on `images` (use other images than the export's, so that a
    value the trace baked in shows up)."""
    expected = wrapped(images)
    actual = run_exported(fmt, path, images)
    names = wrapped.output_names
    if len(actual) != len(expected):
        raise ExportError(f"the exported model returns {len(actual)} outputs, the eager one {len(expected)}")
    diffs = []
    for name, want, got in zip(names, expected, actual):
        if tuple(got.shape) != tuple(want.shape):
            raise ExportError(f"exported output {name!r} has shape {tuple(got.shape)}, eager {tuple(want.shape)}")
        diffs.append((got.double() - want.double()).abs().max().item() if want.numel() else 0.0)
    return Verification(names, tuple(diffs))
