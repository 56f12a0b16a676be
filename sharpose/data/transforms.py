"""Top-down geometry in mmpose 0.x conventions: box <-> (center, scale), the UDP crop warp, flips.

A box is described by its `center` (x, y) in image pixels and its `scale` (w, h) / PIXEL_STD;
every crop, target and back-projection in the project goes through these so that predictions map
back to the exact image coordinates the crop came from.

Sizes given as `(width, height)` are called `*_wh` here; the rest of the project uses (H, W).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

# mmpose normalises box sizes by 200 px ("pixel std"); kept so that scales match its files and code.
PIXEL_STD = 200.0


def box_scale(w: float, h: float, aspect_ratio: float, padding: float) -> np.ndarray:
    """mmpose's scale (in units of PIXEL_STD) of a w x h box enlarged to `aspect_ratio` (w / h), padded."""
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return np.array([w / PIXEL_STD, h / PIXEL_STD], dtype=np.float32) * padding


def box_to_center_scale(
    box_xywh: Sequence[float], aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, w, h) box -> (center, scale), the box grown to `aspect_ratio` (w / h) then padded.

    The aspect fix only ever enlarges one side, so the crop keeps the whole box.
    """
    x, y, w, h = (float(v) for v in box_xywh[:4])
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float32)
    return center, box_scale(w, h, aspect_ratio, padding)


def udp_warp_matrix(
    center: np.ndarray, scale: np.ndarray, rotation: float, output_wh: Sequence[int]
) -> np.ndarray:
    """The 2x3 image -> crop matrix of UDP (unbiased data processing, Huang et al. CVPR 2020).

    UDP measures sizes in pixel *intervals*: the box of `scale * PIXEL_STD` pixels spans
    `output - 1` output intervals, and the box centre lands on the centre of the output pixel grid,
    ((W-1)/2, (H-1)/2). The crop is rotated by `rotation` degrees about the box centre (the same
    sense as mmpose's get_warp_matrix). Returned as float32, as mmpose does, for cv2.warpAffine.
    """
    theta = math.radians(float(rotation))
    cos, sin = math.cos(theta), math.sin(theta)
    size = np.asarray(scale, dtype=np.float64) * PIXEL_STD
    span = np.asarray(output_wh, dtype=np.float64) - 1.0
    sx, sy = span / size
    cx, cy = float(center[0]), float(center[1])
    return np.array(
        [
            [cos * sx, -sin * sx, sx * (-cos * cx + sin * cy) + 0.5 * span[0]],
            [sin * sy, cos * sy, sy * (-sin * cx - cos * cy) + 0.5 * span[1]],
        ],
        dtype=np.float32,
    )


def warp_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points of shape (..., 2)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T.astype(np.float64) + matrix[:, 2].astype(np.float64)


def warp_image(image: np.ndarray, matrix: np.ndarray, output_wh: Sequence[int]) -> np.ndarray:
    """Crop with cv2.warpAffine (bilinear, constant-zero border), as mmpose's TopDownAffine does."""
    return cv2.warpAffine(image, matrix, (int(output_wh[0]), int(output_wh[1])), flags=cv2.INTER_LINEAR)


def flip_joints(
    joints: np.ndarray, visible: np.ndarray, image_width: int, flip_indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror joints in an image of `image_width` pixels: x -> width - 1 - x, left/right swapped.

    As mmpose's fliplr_joints, coordinates of invisible joints are zeroed.
    """
    flipped = joints[flip_indices].copy()
    flipped_visible = visible[flip_indices].copy()
    flipped[:, 0] = image_width - 1 - flipped[:, 0]
    flipped *= flipped_visible[:, None]
    return flipped, flipped_visible


def half_body_center_scale(
    joints: np.ndarray,
    visible: np.ndarray,
    upper_body_ids: Sequence[int],
    aspect_ratio: float,
    pick_upper: bool,
    padding: float = 1.5,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Box around the visible upper- or lower-body joints, or None when too few are visible.

    The upper body is used when `pick_upper` and it has more than two visible joints, else the lower
    body when it has more than two, else the upper body again; fewer than two joints give None
    (mmpose 0.x TopDownHalfBodyTransform).
    """
    is_upper = np.isin(np.arange(len(joints)), upper_body_ids)
    shown = visible > 0
    upper, lower = joints[shown & is_upper], joints[shown & ~is_upper]
    if pick_upper and len(upper) > 2:
        selected = upper
    elif len(lower) > 2:
        selected = lower
    else:
        selected = upper
    if len(selected) < 2:
        return None
    selected = selected.astype(np.float32)
    center = selected.mean(axis=0)
    w, h = selected.max(axis=0) - selected.min(axis=0)
    return center, box_scale(w, h, aspect_ratio, padding)
