"""SHaRPose inference replayed from CUDA graphs, early exit included.

A forward with early exit learns on the host how many samples refine, and the fine stage's shapes
depend on that number, so the forward as a whole cannot be one graph. It is three parts instead:

  coarse graph   the coarse stage and everything else of static shape (`SHaRPose.coarse_stage`),
                 captured once for the batch size;
  host sync      the forward's one read: the number R of refined samples (and the input check);
  fine graph     the fine stage of a bucket of b >= R rows, b a power of two or the batch size,
                 one graph per bucket. With the fixed token budget every refined sample has the
                 same length, so a bucket fixes every shape. Rows R .. b - 1 repeat a refined row;
                 each row is its own sequence in the fine stage, so the repeats cannot change the
                 real rows, and their outputs are dropped.

Off CUDA (or with capture=False) the same steps run eagerly, which is how the bookkeeping is
tested without a GPU.
"""
from __future__ import annotations

import dataclasses

import torch

from sharpose.models.inputs import check_images
from sharpose.models.selection import refined_rows
from sharpose.models.sharpose import CoarseStage, SHaRPose, SHaRPoseOutput


def bucket_sizes(batch_size: int) -> tuple[int, ...]:
    """Fine-stage batch sizes that get a graph: the powers of two below the batch size, and it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sizes = [1 << i for i in range(batch_size.bit_length()) if 1 << i < batch_size]
    return tuple(sizes + [batch_size])


def bucket_for(num_refined: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding `num_refined` rows (buckets ascending)."""
    for size in buckets:
        if size >= num_refined:
            return size
    raise ValueError(f"{num_refined} refined rows exceed the largest bucket ({buckets[-1]})")


def padded_rows(refined: torch.Tensor, num_refined: int, bucket: int) -> torch.Tensor:
    """(bucket,) batch rows for the fine stage: the refined rows in batch order, then copies of the
    first of them (1 <= num_refined <= bucket)."""
    rows = refined_rows(refined, num_refined)
    return torch.cat([rows, rows[:1].expand(bucket - num_refined)])


def scatter_refined(coarse_heatmaps: torch.Tensor, rows: torch.Tensor, fine_heatmaps: torch.Tensor,
                    num_refined: int) -> torch.Tensor:
    """The batch's heatmaps: the fine stage's for the first `num_refined` of `rows`, the coarse
    stage's elsewhere; the padding rows' outputs are dropped."""
    return coarse_heatmaps.index_copy(0, rows[:num_refined], fine_heatmaps[:num_refined])


class GraphedSHaRPose:
    """Inference of `model` on batches of `batch_size`, with the coarse stage and each fine-stage
    bucket recorded as CUDA graphs (see the module docstring). Call it like the model.

    The exit threshold is read from `model.qp_threshold` at every call, outside the graphs, so it
    may change after capture; the weights, backend and dtype are those at capture. Outputs are new
    tensors, not views of the graphs' memory. Needs the fixed token budget (an adaptive budget's
    sequence lengths depend on the image) and an eval-mode model.

    capture: record the graphs (default: when the model is on CUDA); False runs the same steps
    eagerly. warmup: eager runs of each part before its capture (compiles the Triton kernels).
    """

    def __init__(self, model: SHaRPose, batch_size: int, capture: bool | None = None, warmup: int = 2) -> None:
        if model.training:
            raise ValueError("GraphedSHaRPose is for inference: call model.eval() first")
        if model.token_budget.mode != "fixed":
            raise ValueError(
                f"GraphedSHaRPose needs token_budget='fixed' (got {model.token_budget.mode!r}): "
                "an adaptive budget's fine-stage lengths depend on the image"
            )
        parameter = next(model.parameters())
        self.model = model
        self.batch_size = batch_size
        self.buckets = bucket_sizes(batch_size)
        self.capture = parameter.is_cuda if capture is None else capture
        if self.capture and not parameter.is_cuda:
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {parameter.device}")
        self.images = torch.zeros(batch_size, model.in_chans, *model.input_size,
                                  device=parameter.device, dtype=parameter.dtype)
        if self.capture:
            with torch.inference_mode():
                self._capture(warmup)

    # --- capture

    def _capture(self, warmup: int) -> None:
        pool = torch.cuda.graph_pool_handle()
        self.coarse_graph, self.coarse = self._record(lambda: self.model.coarse_stage(self.images), pool, warmup)
        self.coarse_graph.replay()  # capture runs nothing: the fine stage's warm-up needs a valid ranking
        self.fine: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        # largest first, so that the smaller buckets fit in the memory the larger one left in the pool;
        # only one fine graph runs per call and its output is read before the next replay
        for bucket in reversed(self.buckets):
            rows = torch.zeros(bucket, dtype=torch.long, device=self.images.device)
            graph, out = self._record(lambda rows=rows: self._fine_stage(self.coarse, rows), pool, warmup)
            self.fine[bucket] = (graph, rows, out)

    @staticmethod
    def _record(call, pool, warmup: int):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up (Triton compilation, cuBLAS handles) off the capture
            for _ in range(warmup):
                call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = call()
        return graph, out

    def _fine_stage(self, coarse: CoarseStage, rows: torch.Tensor) -> torch.Tensor:
        return self.model.fine_stage(coarse, rows, rows.shape[0] * self.model.token_budget.k_max)

    # --- inference

    def __call__(self, images: torch.Tensor) -> SHaRPoseOutput:
        model = self.model
        check_images(images, model.in_chans, model.input_size, "GraphedSHaRPose", check_finite=False)
        if images.shape[0] != self.batch_size:
            raise ValueError(f"GraphedSHaRPose was captured for batches of {self.batch_size}, got {images.shape[0]}")
        with torch.inference_mode():
            if self.capture:
                self.images.copy_(images)
                self.coarse_graph.replay()
                # fresh tensors for what the output keeps: the next replay overwrites the graph's
                coarse = dataclasses.replace(self.coarse, quality=self.coarse.quality.clone(),
                                             heatmaps=self.coarse.heatmaps.clone(),
                                             patch_scores=self.coarse.patch_scores.clone())
            else:
                coarse = model.coarse_stage(images)
            refined = model.refine_mask(coarse.quality)
            num_refined, _ = model.fetch_sizes(images, refined, coarse.counts)  # the one host sync
            heatmaps = coarse.heatmaps
            if num_refined:
                bucket = bucket_for(num_refined, self.buckets)
                rows = padded_rows(refined, num_refined, bucket)
                if self.capture:
                    graph, static_rows, fine_heatmaps = self.fine[bucket]
                    static_rows.copy_(rows)
                    graph.replay()
                else:
                    fine_heatmaps = self._fine_stage(coarse, rows)
                heatmaps = scatter_refined(heatmaps, rows, fine_heatmaps, num_refined)
            return model.outputs(coarse, refined, heatmaps)
