"""What is timed: transformers' VitPose as an outside peer, one runner per case, the timing of one call,
peak memory, and the CUDA graph and torch.compile modes."""
from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from sharpose.benchmark.records import MODES, Record, Unavailable, first_line
from sharpose.models.graphs import GraphedSHaRPose
from sharpose.models.heads import SimpleDecoder
from sharpose.models.output import PoseOutput
from sharpose.models.sharpose import SHaRPose
from sharpose.models.vitpose import ViTPose


class HFVitPose(nn.Module):
    """transformers' VitPoseForPoseEstimation behind our ViTPose's interface (images -> PoseOutput)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int], in_chans: int) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.in_chans = in_chans

    def forward(self, images: torch.Tensor) -> PoseOutput:
        return PoseOutput(self.model(pixel_values=images).heatmaps)


def hf_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def build_hf_vitpose(ours: ViTPose) -> tuple[HFVitPose, str]:
    """transformers' VitPose with our ViTPose's architecture (random weights) and its attention
    implementation name: SDPA where the backbone takes it (the pose model itself does not declare it)."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    depth = len(ours.blocks)
    backbone = VitPoseBackboneConfig(
        image_size=list(ours.input_size),
        patch_size=[ours.patch_embed.patch_size] * 2,
        num_channels=ours.in_chans,
        hidden_size=ours.norm.normalized_shape[0],
        num_hidden_layers=depth,
        num_attention_heads=ours.blocks[0].attn.num_heads,
        mlp_ratio=ours.blocks[0].mlp.fc1.out_features // ours.norm.normalized_shape[0],
        layer_norm_eps=ours.norm.eps,
        out_indices=[depth],
    )
    config = VitPoseConfig(
        backbone_config=backbone,
        use_simple_decoder=isinstance(ours.decoder, SimpleDecoder),
        num_labels=ours.num_keypoints,
    )
    model = VitPoseForPoseEstimation(config)
    try:
        model.backbone.set_attn_implementation("sdpa")
        attention = "hf-sdpa"
    except (ValueError, AttributeError):
        attention = "hf-eager"
    return HFVitPose(model, ours.input_size, ours.in_chans), attention


@dataclass
class Runner:
    """One timed case: `call` (one forward) run under `policy()` (the model's exit policy: backend, threshold)."""

    record: Record
    call: Callable[[], Any]
    policy: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext


def time_call(call: Callable[[], Any], device: torch.device) -> float:
    """Wall milliseconds of one call started on an idle device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    call()
    return (time.perf_counter() - start_s) * 1e3


def resident_bytes(model: nn.Module, images: torch.Tensor) -> int:
    tensors = list(model.parameters()) + list(model.buffers()) + [images]
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_memory_mib(call: Callable[[], Any], device: torch.device, resident: int) -> float | None:
    """Peak CUDA memory of one forward: its allocation high-water mark plus what it keeps resident."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before + resident) / 2**20


def capture_cuda_graph(call: Callable[[], Any]) -> Callable[[], Any]:
    """Record a whole forward `call` into one CUDA graph; raises Unavailable when it cannot be captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            call()
        torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - any capture failure means "not capturable"
        raise Unavailable(f"CUDA graph capture failed: {type(error).__name__}: {first_line(error)}") from error
    return graph.replay


def graphed_sharpose(model: SHaRPose, images: torch.Tensor) -> Callable[[], Any]:
    """A SHaRPose forward with early exit as CUDA graphs around its one host sync: the coarse stage and
    one fine-stage graph per bucket of refined-sample counts (sharpose.models.graphs)."""
    try:
        graphed = GraphedSHaRPose(model, images.shape[0])
    except ValueError as error:  # e.g. the adaptive budget, whose fine-stage shapes depend on the image
        raise Unavailable(first_line(error)) from error
    except Exception as error:  # noqa: BLE001 - any capture failure makes the case unavailable
        raise Unavailable(f"CUDA graph capture failed: {type(error).__name__}: {first_line(error)}") from error
    return lambda: graphed(images)


def with_mode(call: Callable[[], Any], model: nn.Module, images: torch.Tensor, mode: str) -> Callable[[], Any]:
    if mode == "eager":
        return call
    if mode == "cuda_graph":
        if images.device.type != "cuda":
            raise Unavailable("CUDA graphs need a CUDA device")
        if model.has_early_exit and not model.capturable:  # early exit: sync between graphs
            return graphed_sharpose(model, images)
        return capture_cuda_graph(call)
    if mode == "compile":
        # static shapes: each case (batch, number of refined samples, threshold) gets its own graph, compiled
        # right here, instead of a dynamic-shape recompilation landing in another case's timed rounds; and
        # enough room for all of them rather than a silent fall-back to eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        compiled = torch.compile(model, dynamic=False)
        compiled(images)  # compiles here, so that a failure is reported as this case's
        return lambda: compiled(images)
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
