"""Training losses: target-weighted heatmap MSE (both models) and SHaRPose's quality loss (Eq. 9-11)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from sharpose.data.keypoints import COCO_SIGMAS
from sharpose.evaluation import heatmap_oks
from sharpose.models import PoseOutput


@dataclass
class LossOutput:
    total: torch.Tensor  # what backward() runs on
    terms: dict[str, torch.Tensor]  # detached scalars for the log


def joints_mse_loss(heatmaps: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor) -> torch.Tensor:
    """mmpose 0.x JointsMSELoss(use_target_weight=True): the mean over joints of the MSE (mean over the
    batch and the pixels) between weighted heatmaps, i.e. the mean of (w * (pred - target))^2 over every
    element. (HRNet's version has an extra factor 0.5; mmpose's, which the released configs use, has not.)

    heatmaps, target: (N, K, h, w); target_weight: (N, K, 1).
    """
    weight = target_weight.float()[..., None]
    return ((heatmaps.float() - target.float()) * weight).square().mean()


def pose_loss(output: PoseOutput, batch: Mapping[str, torch.Tensor], *,
              quality_lambda: float = 0.0, input_size: tuple[int, int] | None = None,
              sigmas: Sequence[float] = COCO_SIGMAS) -> LossOutput:
    """The training loss of either model for a collated batch ('target', 'target_weight', 'joints', 'scale').

    ViTPose: the heatmap MSE. SHaRPose (train mode, every sample through both stages): the coarse and the
    fine heatmap MSE plus `quality_lambda` x the MSE between the predicted quality and the OKS of the
    coarse heatmaps (no gradient), over the instances with at least one labelled joint, as the released
    head does; `sigmas` are the dataset's OKS constants (one per keypoint). The quality term stays in the graph when `quality_lambda` is 0, so that every parameter
    gets a (zero) gradient, which DistributedDataParallel without find_unused_parameters needs.
    """
    target, weight = batch["target"], batch["target_weight"]
    if output.quality is None:  # a model without early exit: one stage, no quality to learn
        loss = joints_mse_loss(output.heatmaps, target, weight)
        return LossOutput(loss, {"heatmap_loss": loss.detach()})

    coarse = joints_mse_loss(output.coarse_heatmaps, target, weight)
    fine = joints_mse_loss(output.heatmaps, target, weight)
    oks, valid = heatmap_oks(
        output.coarse_heatmaps, batch["joints"], weight[..., 0] > 0, batch["scale"], input_size=input_size,
        sigmas=sigmas,
    )
    # mean over the valid instances without a host sync; 0 when there are none
    valid = valid.float()
    count = valid.sum().clamp(min=1.0)
    quality_loss = ((output.quality.float() - oks).square() * valid).sum() / count
    total = coarse + fine + quality_lambda * quality_loss
    terms = {
        "heatmap_loss_coarse": coarse.detach(),
        "heatmap_loss_fine": fine.detach(),
        "quality_loss": quality_loss.detach(),
        "oks_mean": (oks * valid).sum() / count,
        "refine_rate": output.refined.float().mean(),
    }
    return LossOutput(total, terms)
