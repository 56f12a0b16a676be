"""UDP Gaussian heatmap targets (mmpose 0.x TopDownGenerateTarget, encoding='UDP', GaussianHeatmap)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def udp_heatmap_targets(
    joints: np.ndarray,
    visible: np.ndarray,
    input_size: Sequence[int],
    heatmap_size: Sequence[int],
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian targets for joints given in crop (input) pixels.

    Args:
        joints: (K, 2) x, y in the input crop.
        visible: (K,) visibility; > 0.5 draws a Gaussian.
        input_size, heatmap_size: (H, W) of the crop and of the heatmaps.
        sigma: Gaussian std in heatmap pixels (2 at 256x192, 3 at 384x288).

    Returns:
        target (K, h, w) float32 and target_weight (K, 1) float32.

    UDP maps the input to the heatmap by pixel intervals, stride (in - 1) / (hm - 1). The Gaussian is
    centred on the exact (sub-pixel) joint but drawn only within a 6*sigma+1 window around the
    rounded joint (mmpose's window, with its int() truncation); the weight is the visibility, set to 0
    when that window lies entirely outside the heatmap.
    """
    hm_h, hm_w = (int(v) for v in heatmap_size)
    stride = (np.array(input_size[::-1], dtype=np.float64) - 1.0) / (np.array([hm_w, hm_h], dtype=np.float64) - 1.0)
    mu_exact = np.asarray(joints, dtype=np.float64)[:, :2] / stride  # (K, 2)
    mu = np.trunc(mu_exact + 0.5)
    radius = 3.0 * sigma
    upper_left = np.trunc(mu - radius)
    bottom_right = np.trunc(mu + radius + 1.0)  # exclusive

    weight = np.asarray(visible, dtype=np.float32).reshape(-1).copy()
    outside = (
        (upper_left[:, 0] >= hm_w) | (upper_left[:, 1] >= hm_h) | (bottom_right[:, 0] < 0) | (bottom_right[:, 1] < 0)
    )
    weight[outside] = 0.0

    # The 2-D Gaussian is separable: exp(-(dx^2 + dy^2) / 2s^2) = gx * gy, each zero outside its window.
    xs, ys = np.arange(hm_w, dtype=np.float64), np.arange(hm_h, dtype=np.float64)
    gx = np.exp(-((xs[None] - mu_exact[:, :1]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((ys[None] - mu_exact[:, 1:]) ** 2) / (2 * sigma**2))
    gx *= (xs[None] >= upper_left[:, :1]) & (xs[None] < bottom_right[:, :1])
    gy *= (ys[None] >= upper_left[:, 1:]) & (ys[None] < bottom_right[:, 1:])
    target = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)
    target[weight <= 0.5] = 0.0
    return target, weight[:, None]
