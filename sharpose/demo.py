"""Top-down inference on one image for `sharpose demo`: person boxes in, per-person crops, keypoints,
SHaRPose's quality / exit decision / keypoint attention / selected patches and COCO results out.

Each box goes through the evaluation pipeline: box -> (center, scale) with padding 1.25, the UDP crop
warp, ImageNet normalisation, one forward pass in eval mode (no flip test) and UDP + DARK decoding.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharpose.data import DataError, box_to_center_scale, load_json, normalize_image, udp_warp_matrix, warp_image
from sharpose.evaluation import decode_heatmaps, rescored
from sharpose.models import PoseModel

Box = tuple[float, float, float, float]  # x, y, w, h in image pixels


@dataclass
class PersonPrediction:
    box: Box
    box_score: float
    center: np.ndarray  # (2,) crop box, mmpose convention
    scale: np.ndarray  # (2,) in units of 200 px
    warp: np.ndarray  # (2, 3) image -> crop
    crop: np.ndarray  # (H, W, 3) uint8 BGR: what the model saw, before normalisation
    keypoints: np.ndarray  # (K, 3) x, y in image pixels and the heatmap maximum
    quality: float | None = None  # SHaRPose only, from here on
    refined: bool | None = None  # the fine stage ran
    patch_scores: np.ndarray | None = None  # (N_c,) keypoint-attention score of each coarse patch
    selected: np.ndarray | None = None  # coarse patches refined, best first (empty when the sample exited)


def blur_kernel_for(input_size: Sequence[int]) -> int:
    """DARK-UDP kernel matching the training targets: sigma 2 (kernel 11) at 256x192, sigma 3 (17) above."""
    return 11 if input_size[0] <= 256 else 17


def crop_box(
    image: np.ndarray, box: Box, input_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(center, scale, image -> crop warp, crop) of one box for a model with `input_size` (H, W)."""
    H, W = input_size
    center, scale = box_to_center_scale(box, aspect_ratio=W / H, padding=1.25)
    warp = udp_warp_matrix(center, scale, 0.0, (W, H))
    return center, scale, warp, warp_image(image, warp, (W, H))


@torch.no_grad()
def predict_people(
    model: PoseModel, image: np.ndarray, boxes: Sequence[Box], box_scores: Sequence[float], device: torch.device
) -> list[PersonPrediction]:
    """Run `model` (eval mode) on every box of a BGR `image` in one batch."""
    crops = [crop_box(image, box, model.input_size) for box in boxes]
    batch = torch.stack([normalize_image(crop) for *_, crop in crops]).to(device)
    model.eval()
    output = model(batch)
    heatmaps = output.heatmaps
    centers = np.stack([c[0] for c in crops])
    scales = np.stack([c[1] for c in crops])
    keypoints = decode_heatmaps(heatmaps, centers, scales, blur_kernel=blur_kernel_for(model.input_size))
    people = [
        PersonPrediction(tuple(map(float, box)), float(score), center, scale, warp, crop, kpts)
        for box, score, (center, scale, warp, crop), kpts in zip(boxes, box_scores, crops, keypoints)
    ]
    if output.quality is not None:  # a model with early exit
        for i, person in enumerate(people):
            person.quality = float(output.quality[i])
            person.refined = bool(output.refined[i])
            person.patch_scores = output.patch_scores[i].cpu().numpy()
            chosen = output.selected[i].cpu().numpy()
            person.selected = chosen[chosen >= 0]
    return people


def coco_result(person: PersonPrediction, image_id: int | None) -> dict[str, Any]:
    """COCO results-format entry (score rescored as mmpose: box score x mean confident keypoint score),
    plus the box and SHaRPose's quality / refined (null for ViTPose)."""
    result: dict[str, Any] = {} if image_id is None else {"image_id": image_id}
    result.update(
        category_id=1,
        keypoints=[round(float(v), 3) for v in person.keypoints.reshape(-1)],
        score=rescored(person.keypoints[:, 2], person.box_score),
        bbox=[round(v, 2) for v in person.box],
        quality=person.quality,
        refined=person.refined,
    )
    return result


def image_id_from_name(path: str | Path) -> int | None:
    """COCO file names are the zero-padded image id (000000196141.jpg -> 196141); None otherwise."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else None


def load_detections(path: str | Path, image_id: int, score_thr: float) -> tuple[list[Box], list[float]]:
    """Person boxes of `image_id` with score >= `score_thr` from a COCO-style detection results file
    (a JSON list of {image_id, bbox [x, y, w, h], score[, category_id]}), best first."""
    entries = load_json(path, "detection file")
    if not isinstance(entries, list):
        raise DataError(f"detection file {path} must hold a JSON list of detections, got a {type(entries).__name__}")
    found = []
    for i, det in enumerate(entries):
        try:
            if int(det["image_id"]) != image_id or int(det.get("category_id", 1)) != 1:
                continue
            box, score = tuple(float(v) for v in det["bbox"]), float(det.get("score", 1.0))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"detection {i} of {path} needs image_id and bbox [x, y, w, h] ({err!r})") from err
        if not math.isfinite(score):  # as evaluation does: a broken detector output is an error, not a drop
            raise DataError(f"detection {i} of {path} has score {det.get('score')!r}: expected a finite number")
        if len(box) != 4 or not all(map(math.isfinite, box)):
            raise DataError(f"detection {i} of {path} has a bad bbox {det['bbox']}: expected [x, y, w, h]")
        if score >= score_thr and box[2] > 0 and box[3] > 0:  # an empty box has nothing to crop
            found.append((score, box))
    found.sort(key=lambda item: -item[0])
    return [box for _, box in found], [score for score, _ in found]
