"""PCKh for MPII (the HRNet/mmpose 0.x evaluation, given head sizes instead of mpii_gt_val.mat)."""
from __future__ import annotations

import numpy as np

from sharpose.data.keypoints import MPII

# MPII head-size convention: 0.6 x the diagonal of the annotated head box.
HEAD_SIZE_FACTOR = 0.6


def mpii_head_sizes(head_boxes: np.ndarray) -> np.ndarray:
    """(N, 4) head boxes x1, y1, x2, y2 -> (N,) PCKh normalisers, 0.6 x the box diagonal."""
    boxes = np.asarray(head_boxes, dtype=np.float64)
    return HEAD_SIZE_FACTOR * np.linalg.norm(boxes[:, 2:4] - boxes[:, 0:2], axis=1)


def pckh(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_sizes: np.ndarray, thr: float = 0.5
) -> np.ndarray:
    """Per-joint PCKh: the fraction of visible joints within thr x head size of the ground truth.

    Args:
        pred, gt: (N, K, 2) x, y in the same pixel frame (the official MPII ground truth is 1-based,
            predictions from this pipeline 0-based: add 1 to the predictions, as mmpose does).
        visible: (N, K) > 0 where the joint is annotated.
        head_sizes: (N,) normalisers (see `mpii_head_sizes`).
        thr: threshold on the normalised distance (<= counts).

    Returns:
        (K,) fractions in [0, 1]; NaN for joints visible in no sample.
    """
    error = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)
    shown = np.asarray(visible) > 0
    hits = (error <= thr * np.asarray(head_sizes, np.float64)[:, None]) & shown
    count = shown.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, hits.sum(axis=0) / count, np.nan)


def mpii_pckh(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_sizes: np.ndarray
) -> dict[str, float]:
    """mmpose 0.x's MPII summary, in percent.

    'Head' (head top) and the left/right means 'Shoulder' ... 'Ankle' at threshold 0.5; 'PCKh' and
    'PCKh@0.1' are joint means weighted by visible counts, pelvis and thorax excluded. As in mmpose
    and HRNet, 'PCKh@0.1' is read from their threshold grid at index 11, i.e. threshold 0.11.
    """
    names = MPII.keypoint_names
    idx = {name: names.index(name) for name in names}
    at_05 = 100.0 * pckh(pred, gt, visible, head_sizes, 0.5)
    at_01 = 100.0 * pckh(pred, gt, visible, head_sizes, 0.11)
    count = (np.asarray(visible) > 0).sum(axis=0).astype(np.float64)
    count[[idx["pelvis"], idx["thorax"]]] = 0.0
    ratio = count / count.sum()

    def both(part: str) -> float:
        return float(0.5 * (at_05[idx[f"left_{part}"]] + at_05[idx[f"right_{part}"]]))

    return {
        "Head": float(at_05[idx["head_top"]]),
        "Shoulder": both("shoulder"),
        "Elbow": both("elbow"),
        "Wrist": both("wrist"),
        "Hip": both("hip"),
        "Knee": both("knee"),
        "Ankle": both("ankle"),
        "PCKh": float(np.nansum(at_05 * ratio)),
        "PCKh@0.1": float(np.nansum(at_01 * ratio)),
    }
