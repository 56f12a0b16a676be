"""COCO person keypoints, top-down (mmpose 0.x TopDownCocoDataset)."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sharpose.data.augment import Augmentation
from sharpose.data.io import DataError, load_json
from sharpose.data.keypoints import COCO
from sharpose.data.topdown import TopDownDataset, TopDownRecords
from sharpose.data.transforms import box_to_center_scale


@dataclass(frozen=True)
class _Image:
    path: str
    width: int
    height: int


class CocoTopDownDataset(TopDownDataset):
    """One sample per person box of a COCO keypoint annotation file.

    Args:
        ann_file: person_keypoints_*.json.
        image_dir: folder holding the images named by `images[].file_name`.
        input_size: (H, W) of the crops.
        sigma: target Gaussian std in heatmap pixels.
        use_gt_bbox: True: one sample per annotated person (GT boxes); False: one per detection
            in `bbox_file` with score >= `det_bbox_thr` (no keypoints, so no targets).
        bbox_file: COCO-format person detections [{image_id, category_id, bbox, score}].
        det_bbox_thr: detection score threshold.
        padding: box padding factor for the crop (1.25).
        augmentation: training augmentation (GT boxes only), None for evaluation.

    GT boxes are cleaned as mmpose 0.x does: clipped to the image (x2 = min(W - 1, x1 + w - 1), ...)
    and dropped when empty or the annotation area is 0. Annotations are read in file order, images in
    `images` order, detections in file order. Detection mode needs only the `images` of the file
    (an image-info file such as COCO test-dev's will do).

    Bad data, by case:
      * unreadable/invalid JSON, missing fields, non-numeric or non-finite box/keypoint values, a
        keypoint list of the wrong length, a detection for an image id that is not in the
        annotation file, an empty detection file: DataError naming the file and the annotation id
        (or detection index) and the value;
      * left out and counted in `skipped` (a Counter): 'crowd', 'no_bbox', 'invalid_bbox' (empty
        after cleaning, zero area, or a detection with w or h <= 0), 'no_keypoints'
        (num_keypoints == 0 or all zero), 'unknown_image' (annotation of an image not listed),
        'not_person' and 'below_threshold' (detections);
      * a labelled keypoint outside the image ([0, width] x [0, height]): kept as unlabelled
        (visibility 0) and counted per keypoint as 'keypoint_outside_image';
      * a missing or undecodable image: DataError naming the file when the sample is loaded.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        *,
        input_size: tuple[int, int] = (256, 192),
        sigma: float = 2.0,
        use_gt_bbox: bool = True,
        bbox_file: str | Path | None = None,
        det_bbox_thr: float = 0.0,
        padding: float = 1.25,
        augmentation: Augmentation | None = None,
    ) -> None:
        if not use_gt_bbox and bbox_file is None:
            raise ValueError("use_gt_bbox=False needs a bbox_file of person detections")
        aspect_ratio = input_size[1] / input_size[0]
        self.ann_file = Path(ann_file)
        data = load_json(self.ann_file, "COCO annotation file")
        images = _read_images(data, self.ann_file, Path(image_dir))
        skipped: Counter = Counter()
        if use_gt_bbox:
            if not isinstance(data.get("annotations"), list):
                raise DataError(f"COCO annotation file {self.ann_file} needs an 'annotations' list for GT boxes")
            records = _gt_records(data["annotations"], images, self.ann_file, aspect_ratio, padding, skipped)
        else:
            records = _det_records(Path(bbox_file), images, det_bbox_thr, aspect_ratio, padding, skipped)
        super().__init__(
            records, COCO, input_size=input_size, sigma=sigma, augmentation=augmentation, skipped=skipped
        )


def _read_images(data: Any, ann_file: Path, image_dir: Path) -> dict[int, _Image]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"COCO annotation file {ann_file} needs an 'images' list")
    images: dict[int, _Image] = {}
    for i, entry in enumerate(data["images"]):
        try:
            image_id, name = int(entry["id"]), str(entry["file_name"])
            width, height = int(entry["width"]), int(entry["height"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{ann_file}: images[{i}] needs id, file_name, width and height ({err!r})") from err
        if image_id in images:
            raise DataError(f"{ann_file}: image id {image_id} is listed twice")
        images[image_id] = _Image(str(image_dir / name), width, height)
    return images


def _numbers(value: Any, length: int, where: str, field: str) -> np.ndarray:
    """`value` as a float64 array of `length` finite numbers, else a DataError naming it."""
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: '{field}' is not a list of numbers: {value!r}") from err
    if array.size != length:
        raise DataError(f"{where}: '{field}' has {array.size} values, expected {length}")
    if not np.isfinite(array).all():
        raise DataError(f"{where}: '{field}' has non-finite values: {value!r}")
    return array


def _clean_box(box: np.ndarray, image: _Image) -> tuple[float, float, float, float] | None:
    """mmpose 0.x's box sanitising: clip to the image, None when nothing is left."""
    x, y, w, h = box
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(image.width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(image.height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 > x1 and y2 > y1:
        return x1, y1, x2 - x1, y2 - y1
    return None


def _gt_records(
    annotations: list[Any], images: dict[int, _Image], ann_file: Path, aspect_ratio: float, padding: float,
    skipped: Counter,
) -> TopDownRecords:
    num_kpts = COCO.num_keypoints
    by_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise DataError(f"{ann_file}: annotations[{i}] is not an object with an image_id")
        if ann["image_id"] not in by_image:
            skipped["unknown_image"] += 1
            continue
        by_image[ann["image_id"]].append(ann)

    files, image_ids, centers, scales, joints, visible = [], [], [], [], [], []
    for image_id, image in images.items():
        for ann in by_image[image_id]:
            where = f"{ann_file}: annotation id {ann.get('id', '?')} (image {image_id})"
            if ann.get("iscrowd", 0):
                skipped["crowd"] += 1
                continue
            if "bbox" not in ann:
                skipped["no_bbox"] += 1
                continue
            box = _clean_box(_numbers(ann["bbox"], 4, where, "bbox"), image)
            if box is None or ("area" in ann and not ann["area"] > 0):
                skipped["invalid_bbox"] += 1
                continue
            if "keypoints" not in ann or ann.get("num_keypoints", None) == 0:
                skipped["no_keypoints"] += 1
                continue
            kpts = _numbers(ann["keypoints"], 3 * num_kpts, where, "keypoints").reshape(num_kpts, 3)
            if kpts.max() == 0:
                skipped["no_keypoints"] += 1
                continue
            vis = np.minimum(1.0, kpts[:, 2])
            x, y = kpts[:, 0], kpts[:, 1]
            outside = (vis > 0) & ((x < 0) | (x > image.width) | (y < 0) | (y > image.height))
            if outside.any():
                skipped["keypoint_outside_image"] += int(outside.sum())
                vis[outside] = 0.0

            center, scale = box_to_center_scale(box, aspect_ratio, padding)
            files.append(image.path)
            image_ids.append(image_id)
            centers.append(center)
            scales.append(scale)
            joints.append(kpts[:, :2])
            visible.append(vis)
    return TopDownRecords.from_lists(files, image_ids, centers, scales, joints=joints, visible=visible,
                                     num_keypoints=num_kpts)


def _det_records(
    bbox_file: Path, images: dict[int, _Image], det_bbox_thr: float, aspect_ratio: float, padding: float,
    skipped: Counter,
) -> TopDownRecords:
    detections = load_json(bbox_file, "person detection file")
    if not isinstance(detections, list) or not detections:
        raise DataError(f"person detection file {bbox_file} must be a non-empty JSON list of detections")
    files, image_ids, centers, scales, scores = [], [], [], [], []
    for i, det in enumerate(detections):
        where = f"{bbox_file}: detection {i}"
        try:
            category, image_id, score = det["category_id"], det["image_id"], float(det["score"])
            raw_box = det["bbox"]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{where} needs category_id, image_id, bbox and a numeric score ({err!r})") from err
        if category != 1:
            skipped["not_person"] += 1
            continue
        if image_id not in images:
            raise DataError(f"{where}: image_id {image_id!r} is not in the annotation file")
        if not math.isfinite(score):
            raise DataError(f"{where}: score is {score}")
        if score < det_bbox_thr:
            skipped["below_threshold"] += 1
            continue
        box = _numbers(raw_box, 4, where, "bbox")
        if box[2] <= 0 or box[3] <= 0:
            skipped["invalid_bbox"] += 1
            continue
        center, scale = box_to_center_scale(box, aspect_ratio, padding)
        files.append(images[image_id].path)
        image_ids.append(image_id)
        centers.append(center)
        scales.append(scale)
        scores.append(score)
    return TopDownRecords.from_lists(files, image_ids, centers, scales, bbox_scores=scores)
