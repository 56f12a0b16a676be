"""OKS-based non-maximum suppression of the poses of one image (mmpose 0.x oks_nms / soft_oks_nms)."""
from __future__ import annotations

import numpy as np

from sharpose.data.keypoints import COCO_SIGMAS


def oks_iou(
    pose: np.ndarray, others: np.ndarray, area: float, other_areas: np.ndarray, sigmas: np.ndarray = COCO_SIGMAS
) -> np.ndarray:
    """OKS between one pose (K, 2+) and others (M, K, 2+), all keypoints counted.

    The object scale is the mean of the two areas (mmpose's oks_iou with vis_thr=None). Returned as
    float32, as mmpose stores it, so threshold comparisons round the same way.
    """
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2
    sq_dist = ((others[..., :2] - pose[None, :, :2]) ** 2).sum(-1)
    mean_area = (area + other_areas) / 2.0 + np.spacing(1)
    e = sq_dist / variances[None] / mean_area[:, None] / 2.0
    return np.exp(-e).mean(axis=1).astype(np.float32)


def _descending(scores: np.ndarray) -> np.ndarray:
    # Reversed stable sort: tied scores in descending index order, what mmpose's
    # argsort()[::-1] gives for the small arrays numpy sorts by insertion.
    return np.argsort(scores, kind="stable")[::-1]


def oks_nms(
    keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float, sigmas: np.ndarray = COCO_SIGMAS
) -> np.ndarray:
    """Greedy OKS-NMS: take the best pose, drop the others with OKS > thr, repeat.

    Args:
        keypoints: (M, K, 3) poses of one image.
        scores, areas: (M,) pose scores and box areas.

    Returns:
        Indices of the kept poses, best first.
    """
    order = _descending(np.asarray(scores, dtype=np.float64))
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        overlap = oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas)
        order = rest[overlap <= thr]
    return np.array(keep, dtype=np.int64)


def soft_oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    thr: float,
    sigmas: np.ndarray = COCO_SIGMAS,
    max_dets: int = 20,
) -> np.ndarray:
    """Soft OKS-NMS with Gaussian decay: after each pick the remaining scores are multiplied by
    exp(-oks^2 / thr) and re-sorted; at most `max_dets` poses are kept. Only the choice and order of
    poses is returned; the decayed scores are not (mmpose 0.x keeps the original scores too).
    """
    order = _descending(np.asarray(scores, dtype=np.float64))
    decayed = np.asarray(scores, dtype=np.float64)[order]
    keep = []
    while order.size and len(keep) < max_dets:
        best, rest = order[0], order[1:]
        keep.append(best)
        overlap = oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas)
        decayed = decayed[1:] * np.exp(-(overlap.astype(np.float64) ** 2) / thr)
        resort = _descending(decayed)
        order, decayed = rest[resort], decayed[resort]
    return np.array(keep, dtype=np.int64)
