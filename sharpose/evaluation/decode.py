"""Heatmaps -> keypoints in image pixels: UDP decoding with DARK refinement, and flip-test helpers.

This is mmpose 0.x keypoints_from_heatmaps with post_process='default', use_udp=True and
target_type='GaussianHeatmap' (the ViTPose/SHaRPose test config): argmax, then one Newton step on
the log of the Gaussian-blurred heatmap (DARK, Zhang et al. CVPR 2020, in its UDP form), then the
UDP back-projection.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import cv2
import numpy as np
import torch

from sharpose.data.keypoints import COCO, flip_permutation
from sharpose.data.transforms import PIXEL_STD

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Location and value of each heatmap's maximum.

    Args:
        heatmaps: (N, K, H, W).

    Returns:
        coords (N, K, 2) float32 (x, y) in heatmap pixels, the first maximum in row-major order,
        -1 where the maximum is <= 0 (mmpose's "no detection"); maxvals (N, K).
    """
    n, k, _, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    index = flat.argmax(dim=-1)
    maxvals = flat.gather(-1, index[..., None])[..., 0]
    coords = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=-1).to(torch.float32)
    coords[maxvals <= 0] = -1.0
    return coords, maxvals


def dark_udp_refine(coords: np.ndarray, heatmaps: np.ndarray, blur_kernel: int = 11) -> np.ndarray:
    """Sub-pixel refinement of integer argmax locations (mmpose 0.x post_dark_udp).

    The heatmaps are blurred with a `blur_kernel` Gaussian (OpenCV's sigma for that size: 11 ~ sigma 2,
    17 ~ sigma 3, matching the training targets), clipped to [0.001, 50] and log-transformed; the
    offset is minus the inverse Hessian times the gradient, both by central differences, with the
    border replicated by one pixel. Locations marked -1 (maximum <= 0) are returned unchanged (mmpose
    would refine them from wrapped-around neighbours), as are the rare ones with a singular Hessian.

    Args:
        coords: (N, K, 2) integer-valued x, y from `heatmap_argmax`.
        heatmaps: (N, K, H, W); not modified.
        blur_kernel: odd Gaussian kernel size.
    """
    n, k, h, w = heatmaps.shape
    blurred = np.array(heatmaps, dtype=np.float32, copy=True).reshape(-1, h, w)
    for heatmap in blurred:
        heatmap[...] = cv2.GaussianBlur(heatmap, (blur_kernel, blur_kernel), 0)
    logs = np.log(np.clip(blurred, 0.001, 50.0)).astype(np.float64)
    padded = np.pad(logs, ((0, 0), (1, 1), (1, 1)), mode="edge")

    flat_coords = coords.reshape(-1, 2)
    valid = (flat_coords >= 0).all(axis=1)
    x = np.clip(flat_coords[:, 0].astype(np.int64), 0, w - 1) + 1
    y = np.clip(flat_coords[:, 1].astype(np.int64), 0, h - 1) + 1
    maps = np.arange(n * k)

    def at(dy: int, dx: int) -> np.ndarray:
        return padded[maps, y + dy, x + dx]

    center = at(0, 0)
    right, left, down, up = at(0, 1), at(0, -1), at(1, 0), at(-1, 0)
    dx = 0.5 * (right - left)
    dy = 0.5 * (down - up)
    dxx = right - 2 * center + left
    dyy = down - 2 * center + up
    dxy = 0.5 * (at(1, 1) - right - down + 2 * center - left - up + at(-1, -1))
    # Closed-form inverse of [[dxx, dxy], [dxy, dyy]] + eps * I, eps = float32 machine epsilon as mmpose.
    eps = float(np.finfo(np.float32).eps)
    a, d = dxx + eps, dyy + eps
    det = a * d - dxy * dxy
    ok = valid & (det != 0)
    safe_det = np.where(ok, det, 1.0)
    offset = np.stack([(d * dx - dxy * dy) / safe_det, (a * dy - dxy * dx) / safe_det], axis=1)
    refined = flat_coords.astype(np.float64) - np.where(ok[:, None], offset, 0.0)
    return refined.reshape(coords.shape).astype(np.float32)


def heatmap_to_image(
    coords: np.ndarray, center: np.ndarray, scale: np.ndarray, heatmap_size: Sequence[int]
) -> np.ndarray:
    """UDP back-projection (mmpose transform_preds, use_udp=True) of heatmap pixels to image pixels.

    Args:
        coords: (N, K, 2) x, y in heatmap pixels.
        center, scale: (N, 2) the crop boxes (scale in units of 200 px).
        heatmap_size: (H, W) of the heatmaps.

    The heatmap's W - 1 (H - 1) pixel intervals span the box's scale * 200 pixels.
    """
    size = np.asarray(scale, dtype=np.float64) * PIXEL_STD  # (N, 2)
    steps = size / (np.array(heatmap_size[::-1], dtype=np.float64) - 1.0)
    origin = np.asarray(center, dtype=np.float64) - 0.5 * size
    return (np.asarray(coords, dtype=np.float64) * steps[:, None] + origin[:, None]).astype(np.float32)


def decode_heatmaps(
    heatmaps: np.ndarray | torch.Tensor,
    center: np.ndarray | torch.Tensor,
    scale: np.ndarray | torch.Tensor,
    *,
    blur_kernel: int = 11,
) -> np.ndarray:
    """Keypoints in image pixels from a batch of heatmaps (argmax + DARK-UDP + UDP back-projection).

    Args:
        heatmaps: (N, K, H, W) model output (after flip-test averaging, if any).
        center, scale: (N, 2) the crop boxes of the batch (the dataset's 'center' and 'scale').
        blur_kernel: DARK modulation kernel, 11 for sigma-2 targets (256x192), 17 for sigma 3 (384x288).

    Returns:
        (N, K, 3) float32: x, y in image pixels and the heatmap maximum as the keypoint score.
    """
    heatmaps = torch.as_tensor(heatmaps).detach().float()
    coords, maxvals = heatmap_argmax(heatmaps)
    heatmaps_np = heatmaps.cpu().numpy()
    coords = dark_udp_refine(coords.cpu().numpy(), heatmaps_np, blur_kernel)
    image_coords = heatmap_to_image(
        coords, _numpy(center), _numpy(scale), heatmaps_np.shape[2:]
    )
    return np.concatenate([image_coords, maxvals.cpu().numpy()[..., None]], axis=-1).astype(np.float32)


def flip_back_heatmaps(
    heatmaps: ArrayOrTensor, flip_pairs: Sequence[Sequence[int]] = COCO.flip_pairs
) -> ArrayOrTensor:
    """Heatmaps predicted for a horizontally flipped crop, mapped back to the unflipped crop.

    Swaps left/right channels and mirrors the width axis (mmpose flip_back). With UDP the mirror is
    exact, so no one-pixel shift follows (shift_heatmap=False). Flip test: average
    `heatmaps` and `flip_back_heatmaps(model(images.flip(3)))`.
    """
    perm = flip_permutation(heatmaps.shape[1], flip_pairs)
    if isinstance(heatmaps, torch.Tensor):
        return heatmaps[:, torch.as_tensor(perm, device=heatmaps.device)].flip(-1)
    return np.ascontiguousarray(heatmaps[:, perm, :, ::-1])


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
