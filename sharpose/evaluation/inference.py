"""Top-down inference over a dataset: decoded keypoints for every choice of SHaRPose stage.

SHaRPose's early exit picks, per crop, the coarse heatmaps (quality >= Q_thres) or the fine ones; a
crop's fine stage does not depend on the rest of its batch. So one eval pass with the threshold at +inf
(every crop runs both stages) gives the outcome at any threshold: this module decodes the keypoints of
each stage combination -- coarse or fine for the original crop, times coarse or fine for the flipped
crop under flip test -- and `CropPredictions.at_threshold` picks per crop afterwards (Figure 6's sweep
without re-running the model). ViTPose has a single stage.

Flip test as mmpose 0.x with UDP: the flipped crop goes through the model, its heatmaps are flipped
back (no shift) and averaged with the original's.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from sharpose.data import TopDownDataset
from sharpose.engine.amp import autocast
from sharpose.engine.distributed import DistContext, gather_to_main
from sharpose.evaluation import decode_heatmaps, flip_back_heatmaps
from sharpose.models import PoseModel, PoseOutput


@dataclass
class CropPredictions:
    """Per-sample predictions of a dataset pass, in dataset order."""

    indices: np.ndarray  # (N,) dataset indices
    image_ids: np.ndarray  # (N,)
    box_scores: np.ndarray  # (N,)
    areas: np.ndarray  # (N,) padded box areas (OKS-NMS)
    keypoints: np.ndarray  # (N, S, F, K, 3) x, y, score in image pixels; S = stages of the original
    #   crop (1, or 2 for SHaRPose: coarse, fine), F = stages of the flipped crop (1 without flip test)
    quality: np.ndarray | None  # (N, C) SHaRPose's predicted quality of the original (and flipped) crop

    def at_threshold(self, threshold: float) -> tuple[np.ndarray, float | None]:
        """(N, K, 3) keypoints when each crop exits with quality >= `threshold` (coarse heatmaps) and
        refines otherwise, and the fraction of crops (original and flipped) that exited; ViTPose: its
        keypoints and None."""
        if self.quality is None:
            return self.keypoints[:, 0, 0], None
        refined = (self.quality < threshold).astype(np.int64)  # 1: fine stage, as SHaRPose decides
        flipped = refined[:, 1] if refined.shape[1] == 2 else np.zeros_like(refined[:, 0])
        rows = np.arange(len(refined))
        return self.keypoints[rows, refined[:, 0], flipped], float(1.0 - refined.mean())


def stage_heatmaps(model: PoseModel, images: torch.Tensor, flip_pairs: Sequence[Sequence[int]],
                   flip_test: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Heatmaps (B, S, F, K, h, w) of every stage combination (float32) and the quality (B, C) or None.

    Under flip test entry [s, f] is the mean of the original crop's stage s and the flipped-back
    flipped crop's stage f."""
    own, quality = _stages(model(images))
    if not flip_test:
        return own[:, :, None], quality
    flipped, flipped_quality = _stages(model(images.flip(3)))
    back = flip_back_heatmaps(flipped.flatten(0, 1), flip_pairs).unflatten(0, flipped.shape[:2])
    combined = 0.5 * (own[:, :, None] + back[:, None, :])
    return combined, None if quality is None else torch.cat([quality, flipped_quality], dim=1)


def _stages(output: PoseOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
    quality = None if output.quality is None else output.quality.float()[:, None]
    return output.stage_heatmaps().float(), quality


def decode_stages(heatmaps: torch.Tensor, center: torch.Tensor, scale: torch.Tensor,
                  blur_kernel: int) -> np.ndarray:
    """(B, S, F, K, h, w) heatmaps -> (B, S, F, K, 3) keypoints in image pixels (UDP + DARK-UDP)."""
    combos = heatmaps.shape[1] * heatmaps.shape[2]
    keypoints = decode_heatmaps(
        heatmaps.flatten(0, 2),
        center.repeat_interleave(combos, dim=0),
        scale.repeat_interleave(combos, dim=0),
        blur_kernel=blur_kernel,
    )
    return keypoints.reshape(*heatmaps.shape[:4], 3)


@contextlib.contextmanager
def every_stage(model: PoseModel) -> Iterator[None]:
    """Eval mode with SHaRPose's early exit off (threshold +inf); restores mode and threshold after."""
    was_training = model.training
    model.eval()
    try:
        with model.exit_policy(qp_threshold=math.inf):
            yield
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model: PoseModel, dataset: TopDownDataset, ctx: DistContext, *, batch_size: int, workers: int,
            flip_test: bool, blur_kernel: int, amp: str = "none", progress: bool = False) -> CropPredictions | None:
    """Run `model` (not DDP-wrapped) over `dataset`, each process over its share (indices rank::world);
    the main process gets every sample's predictions, the others None."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    # own generator: evaluating during training must not draw from the global RNG (exact resume)
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, pin_memory=ctx.device.type == "cuda",
                        generator=torch.Generator())
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image_ids", "box_scores", "areas", "keypoints", "quality")}
    with every_stage(model):
        for batch in tqdm(loader, desc="eval", disable=not (progress and ctx.is_main), leave=False):
            images = batch["image"].to(ctx.device, non_blocking=True)
            with autocast(ctx.device, amp):
                heatmaps, quality = stage_heatmaps(model, images, dataset.info.flip_pairs, flip_test)
            parts["keypoints"].append(decode_stages(heatmaps, batch["center"], batch["scale"], blur_kernel))
            if quality is not None:
                parts["quality"].append(quality.cpu().numpy())
            parts["image_ids"].append(batch["image_id"].numpy())
            parts["box_scores"].append(batch["bbox_score"].numpy())
            parts["areas"].append(batch["area"].numpy())
    local = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    local["indices"] = np.asarray(shard.indices, dtype=np.int64)
    gathered = gather_to_main(local, ctx)
    if gathered is None:
        return None
    merged = {}
    for key in local:  # a process with an empty share has None entries
        arrays = [g[key] for g in gathered if g[key] is not None]
        merged[key] = np.concatenate(arrays) if arrays else None
    order = np.argsort(merged["indices"], kind="stable")
    return CropPredictions(**{k: None if v is None else v[order] for k, v in merged.items()})
