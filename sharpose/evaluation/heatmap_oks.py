"""OKS of heatmap predictions against ground truth: SHaRPose's quality-predictor target.

The released SHaRPose head (models/eval_utils.py, instance_oks) trains the quality token towards
the OKS of the coarse-stage heatmaps: argmax of the predicted heatmap vs argmax of the target
heatmap, both mapped to image pixels, with the padded box area prod(scale * 200) as object area
and the COCO sigmas, averaged over the joints whose target weight is positive.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sharpose.data.keypoints import COCO_SIGMAS
from sharpose.data.transforms import PIXEL_STD
from sharpose.evaluation.decode import heatmap_argmax


def heatmap_oks(
    heatmaps: torch.Tensor | np.ndarray,
    joints: torch.Tensor | np.ndarray,
    joints_visible: torch.Tensor | np.ndarray,
    scale: torch.Tensor | np.ndarray,
    *,
    input_size: Sequence[int] | None = None,
    sigmas: Sequence[float] = COCO_SIGMAS,
    released: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance OKS of predicted heatmaps against the ground-truth joints (no gradient).

    Args:
        heatmaps: (N, K, h, w) predictions (e.g. the coarse-stage heatmaps).
        joints: (N, K, 2+) ground-truth x, y in crop (input) pixels: the dataset's 'joints'.
        joints_visible: (N, K) which joints count: target_weight[..., 0] > 0.
        scale: (N, 2) crop box scales (the dataset's 'scale').
        input_size: (H, W) of the crops; default 4 x the heatmap size.
        sigmas: per-keypoint OKS constants.
        released: True reproduces the released code: the ground truth is the argmax of its UDP
            target, i.e. the heatmap pixel nearest the joint (ties to the lower index), clamped into
            the heatmap (it can differ only for a joint within float32 rounding of the midpoint of
            two pixels, where the target's two values round equal), and heatmap pixels
            are scaled to image pixels by scale * 200 / (h, w) -- the non-UDP step with height and
            width swapped, as eval_utils._transform_coords is called with [H, W]. False: predicted
            argmax and exact joints both mapped with the UDP steps (a plain image-space OKS).

    The box centre (and the rotation of an augmented crop) does not enter: OKS depends only on
    distances, which the shared translation leaves unchanged.

    Returns:
        oks (N,) float32, 0 for instances without counted joints; valid (N,) bool, True where at least
        one joint counts (the released code returns oks[valid] only). Both on the heatmaps' device.
    """
    heatmaps = torch.as_tensor(heatmaps).detach()
    device = heatmaps.device

    def as64(value: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().to(device=device, dtype=torch.float64)
        return torch.tensor(np.asarray(value, dtype=np.float64), device=device)

    n, k, h, w = heatmaps.shape
    in_h, in_w = input_size if input_size is not None else (4 * h, 4 * w)
    pred = heatmap_argmax(heatmaps.float())[0].to(torch.float64)
    gt = as64(joints)[..., :2]
    size = as64(scale) * PIXEL_STD  # (N, 2) box size in image pixels
    hm_wh = as64([w, h])
    if released:
        stride = (as64([in_w, in_h]) - 1.0) / (hm_wh - 1.0)
        gt_hm = torch.minimum(torch.ceil(gt / stride - 0.5).clamp(min=0.0), hm_wh - 1.0)
        diff = (pred - gt_hm) * (size / as64([h, w]))[:, None]
    else:
        diff = pred * (size / (hm_wh - 1.0))[:, None] - gt * (size / (as64([in_w, in_h]) - 1.0))[:, None]

    variances = (2.0 * as64(sigmas)) ** 2
    area = size.prod(dim=-1, keepdim=True)
    e = (diff**2).sum(-1) / variances / (area + np.spacing(1)) / 2.0
    counted = as64(joints_visible) > 0
    num = counted.sum(dim=1)
    oks = (torch.exp(-e) * counted).sum(dim=1) / num.clamp(min=1)
    return oks.to(torch.float32), num > 0
