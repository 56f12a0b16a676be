"""COCO keypoint AP/AR of top-down predictions: mmpose 0.x rescoring and OKS-NMS, then pycocotools.

A prediction is a mapping with
  * 'image_id': the COCO image id,
  * 'keypoints': (K, 3) (or 3K flat) x, y, score in image pixels,
  * 'box_score': the detection score of its box (1 for GT boxes),
  * 'area': the padded box area prod(scale * 200) (the dataset's 'area'; needed for OKS-NMS).
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sharpose.data.io import load_json
from sharpose.data.keypoints import COCO_SIGMAS
from sharpose.evaluation.nms import oks_nms, soft_oks_nms

STATS_NAMES = ("AP", "AP .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)")


def rescored(keypoint_scores: np.ndarray, box_score: float, vis_thr: float = 0.2) -> float:
    """mmpose 0.x's instance score: box score x mean of the keypoint scores above `vis_thr` (0 if none).

    The scores are taken as float32 (what models output) and averaged exactly (a float64 sum of
    float32 values is exact), so poses whose confident keypoints share one score tie exactly, as they
    do in mmpose's sequential loop, whatever their number of keypoints.
    """
    scores = np.asarray(keypoint_scores, dtype=np.float32).astype(np.float64)
    confident = scores[scores > vis_thr]
    mean = confident.sum() / confident.size if confident.size else 0.0
    return float(box_score) * mean


def coco_results(
    predictions: Iterable[Mapping[str, Any]],
    *,
    rescore: bool = True,
    nms_thr: float | None = 0.9,
    soft_nms: bool = False,
    vis_thr: float = 0.2,
    sigmas: Sequence[float] = COCO_SIGMAS,
) -> list[dict[str, Any]]:
    """Rescore and OKS-NMS the predictions of each image; return them in the COCO results format.

    Args:
        predictions: see the module docstring.
        rescore: score = box_score x mean confident keypoint score (else score = box_score).
        nms_thr: OKS threshold of the per-image NMS (0.9 in the configs); None: no NMS.
        soft_nms: Gaussian soft OKS-NMS (at most 20 poses per image) instead of hard NMS.
        vis_thr: keypoint score threshold of the rescoring.
        sigmas: OKS constants of the NMS.

    Returns:
        [{'image_id', 'category_id': 1, 'keypoints': [x, y, s] * K, 'score'}], images in order of first
        appearance, each image's poses in NMS keep order (best first). Ties in score keep mmpose's
        order (descending input order), which decides COCOeval's order among equal scores.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    per_image: dict[Any, list[tuple[np.ndarray, float, float]]] = {}
    for i, pred in enumerate(predictions):
        try:
            image_id, box_score = int(pred["image_id"]), float(pred["box_score"])
            kpts = np.asarray(pred["keypoints"], dtype=np.float64).reshape(len(sigmas), 3)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"prediction {i} needs image_id, box_score and {len(sigmas)} x 3 keypoints ({err!r})"
            ) from err
        if not np.isfinite(kpts).all():
            raise ValueError(f"prediction {i} (image {image_id}) has non-finite keypoints")
        area = float(pred.get("area", np.nan))
        if nms_thr is not None and not area > 0:
            raise ValueError(f"prediction {i} (image {image_id}) needs a positive 'area' for OKS-NMS, got {area}")
        score = rescored(kpts[:, 2], box_score, vis_thr) if rescore else box_score
        per_image.setdefault(image_id, []).append((kpts, score, area))

    results = []
    for image_id, poses in per_image.items():
        kpts = np.stack([p[0] for p in poses])
        scores = np.array([p[1] for p in poses])
        if nms_thr is None:
            keep = np.arange(len(poses))
        else:
            nms = soft_oks_nms if soft_nms else oks_nms
            keep = nms(kpts, scores, np.array([p[2] for p in poses]), nms_thr, sigmas)
        results.extend(
            {
                "image_id": image_id,
                "category_id": 1,
                "keypoints": kpts[i].reshape(-1).tolist(),
                "score": float(scores[i]),
            }
            for i in keep
        )
    return results


def write_coco_results(results: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write COCO-format keypoint results (e.g. from `coco_results`) as a JSON list."""
    Path(path).write_text(json.dumps(list(results)))


def load_coco(ann_file: str | Path) -> COCO:
    """A pycocotools COCO index of an annotation file, without its console output; bad files raise
    DataError naming the file."""
    coco = COCO()
    coco.dataset = load_json(ann_file, "COCO annotation file")
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_coco_results(
    results: Sequence[Mapping[str, Any]],
    ann_file: str | Path | COCO,
    *,
    sigmas: Sequence[float] = COCO_SIGMAS,
    verbose: bool = False,
) -> dict[str, float]:
    """COCOeval(iouType='keypoints') of COCO-format results; the ten stats by name (STATS_NAMES).

    pycocotools prints progress and the summary table; that output is dropped unless `verbose`.
    Pass a preloaded `COCO` (see `load_coco`) to avoid re-reading a large annotation file.
    """
    if not results:
        raise ValueError("no predictions to evaluate")
    coco_gt = ann_file if isinstance(ann_file, COCO) else load_coco(ann_file)
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"predictions for image ids not in the annotation file: {sorted(unknown)[:10]}")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        # loadRes adds fields to the dicts it is given: hand it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(value) for name, value in zip(STATS_NAMES, coco_eval.stats)}


def coco_keypoint_metrics(
    predictions: Iterable[Mapping[str, Any]],
    ann_file: str | Path | COCO,
    *,
    rescore: bool = True,
    nms_thr: float | None = 0.9,
    soft_nms: bool = False,
    vis_thr: float = 0.2,
    sigmas: Sequence[float] = COCO_SIGMAS,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO keypoint AP/AR of top-down predictions, as mmpose 0.x TopDownCocoDataset.evaluate.

    `coco_results` (rescoring, per-image OKS-NMS) then `evaluate_coco_results` (pycocotools).
    Returns {'AP', 'AP .5', 'AP .75', 'AP (M)', 'AP (L)', 'AR', 'AR .5', 'AR .75', 'AR (M)', 'AR (L)'}.
    Unlike mmpose, predictions are not de-duplicated by box id: pass each box once.
    """
    results = coco_results(
        predictions, rescore=rescore, nms_thr=nms_thr, soft_nms=soft_nms, vis_thr=vis_thr, sigmas=sigmas
    )
    return evaluate_coco_results(results, ann_file, sigmas=sigmas, verbose=verbose)
