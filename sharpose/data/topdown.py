"""The top-down sample pipeline shared by the COCO and MPII datasets.

One sample = one person box. `__getitem__` reads the image, optionally augments, crops with the
UDP warp, normalises with ImageNet statistics and (when the dataset has keypoints) draws UDP
Gaussian targets: mmpose 0.x's LoadImageFromFile -> [augmentation] -> TopDownAffine(use_udp) ->
ToTensor -> NormalizeTensor -> TopDownGenerateTarget(encoding='UDP').
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sharpose.data.augment import Augmentation
from sharpose.data.io import DataError, read_image
from sharpose.data.keypoints import KeypointInfo
from sharpose.data.targets import udp_heatmap_targets
from sharpose.data.transforms import PIXEL_STD, udp_warp_matrix, warp_image, warp_points

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class TopDownRecords:
    """All samples of a dataset as flat arrays (cheap to share with DataLoader workers).

    joints/visible are None for detection boxes, which carry no keypoints.
    """

    image_files: np.ndarray  # (N,) str, one path per sample (a numpy array: no per-item refcounts)
    image_ids: np.ndarray  # (N,) int64
    centers: np.ndarray  # (N, 2) float32
    scales: np.ndarray  # (N, 2) float32
    bbox_scores: np.ndarray  # (N,) float64
    joints: np.ndarray | None = None  # (N, K, 2) float32, image pixels
    visible: np.ndarray | None = None  # (N, K) float32, 0 or 1

    @classmethod
    def from_lists(
        cls,
        files: list[str],
        image_ids: list[int] | np.ndarray,
        centers: list[np.ndarray],
        scales: list[np.ndarray],
        bbox_scores: list[float] | None = None,
        joints: list[np.ndarray] | None = None,
        visible: list[np.ndarray] | None = None,
        num_keypoints: int = 0,
    ) -> "TopDownRecords":
        """Records from per-sample lists; box scores default to 1 (ground-truth boxes)."""
        n = len(files)
        return cls(
            image_files=np.array(files, dtype=str),
            image_ids=np.asarray(image_ids, dtype=np.int64),
            centers=np.array(centers, dtype=np.float32).reshape(n, 2),
            scales=np.array(scales, dtype=np.float32).reshape(n, 2),
            bbox_scores=np.ones(n) if bbox_scores is None else np.array(bbox_scores, dtype=np.float64),
            joints=None if joints is None else np.array(joints, dtype=np.float32).reshape(n, num_keypoints, 2),
            visible=None if visible is None else np.array(visible, dtype=np.float32).reshape(n, num_keypoints),
        )


def normalize_image(crop_bgr: np.ndarray) -> torch.Tensor:
    """uint8 BGR crop (H, W, 3) -> float32 RGB tensor (3, H, W) with ImageNet mean/std."""
    rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return torch.from_numpy(((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy())


class TopDownDataset(Dataset):
    """Person crops with UDP targets. Subclasses build the records.

    Args:
        records: the samples.
        info: skeleton metadata (flip pairs, half-body joints).
        input_size: (H, W) of the crops, e.g. (256, 192) or (384, 288).
        sigma: target Gaussian std in heatmap pixels (2 at 256x192, 3 at 384x288).
        augmentation: training augmentation, or None for evaluation crops.

    Items are dicts: 'image' (3, H, W) float32; with keypoints 'target' (K, H/4, W/4) float32,
    'target_weight' (K, 1) float32 and 'joints' (K, 3) float32 (x, y in the crop, visibility);
    meta 'image_id', 'image_file', 'center' (2,), 'scale' (2,) (after augmentation), 'rotation'
    (degrees), 'bbox_score' and 'area' (= prod(scale * 200), the padded box area OKS-NMS uses).

    Randomness: each augmented item seeds a numpy Generator from torch's RNG, so
    `torch.manual_seed` (main process) and the DataLoader's per-worker seeding make runs reproducible.

    `skipped` counts annotations left out at load time, by reason (see the subclass docstrings).
    """

    def __init__(
        self,
        records: TopDownRecords,
        info: KeypointInfo,
        *,
        input_size: tuple[int, int] = (256, 192),
        sigma: float = 2.0,
        augmentation: Augmentation | None = None,
        skipped: Counter | None = None,
    ) -> None:
        if augmentation is not None and records.joints is None:
            raise ValueError("augmentation needs keypoints: boxes without keypoints (detections) cannot be augmented")
        self.records = records
        self.info = info
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (self.input_size[0] // 4, self.input_size[1] // 4)
        self.sigma = float(sigma)
        self.augmentation = augmentation
        self.skipped: Counter = skipped if skipped is not None else Counter()

    def describe_skipped(self) -> str:
        """'left out: 2 invalid_bbox, 1 unknown_image' (annotations dropped at load time), or ''."""
        if not self.skipped:
            return ""
        return "left out: " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))

    @property
    def aspect_ratio(self) -> float:
        """Crop width / height."""
        return self.input_size[1] / self.input_size[0]

    @property
    def has_keypoints(self) -> bool:
        return self.records.joints is not None

    def __len__(self) -> int:
        return len(self.records.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = None
        if self.augmentation is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return self.get_sample(index, rng)

    def get_sample(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The item at `index`; `rng` drives the augmentation (required when there is one)."""
        rec = self.records
        image_file = str(rec.image_files[index])
        try:
            image = read_image(image_file)
        except DataError as err:
            raise DataError(f"{err} (sample {index}, image_id {int(rec.image_ids[index])})") from err

        center, scale, rotation = rec.centers[index].copy(), rec.scales[index].copy(), 0.0
        joints = visible = None
        if self.has_keypoints:
            joints, visible = rec.joints[index].copy(), rec.visible[index].copy()
        if self.augmentation is not None:
            if rng is None:
                raise ValueError("an augmenting dataset needs a numpy Generator")
            out = self.augmentation(rng, image, center, scale, joints, visible, self.info, self.aspect_ratio)
            image, center, scale, rotation, joints, visible = (
                out.image, out.center, out.scale, out.rotation, out.joints, out.visible
            )

        output_wh = self.input_size[::-1]
        matrix = udp_warp_matrix(center, scale, rotation, output_wh)
        item: dict[str, Any] = {
            "image": normalize_image(warp_image(image, matrix, output_wh)),
            "image_id": int(rec.image_ids[index]),
            "image_file": image_file,
            "center": torch.from_numpy(center.astype(np.float32)),
            "scale": torch.from_numpy(scale.astype(np.float32)),
            "rotation": float(rotation),
            "bbox_score": float(rec.bbox_scores[index]),
            "area": float(np.prod(scale.astype(np.float64) * PIXEL_STD)),
        }
        if joints is not None:
            crop_joints = warp_points(joints, matrix).astype(np.float32)
            target, weight = udp_heatmap_targets(crop_joints, visible, self.input_size, self.heatmap_size, self.sigma)
            item["target"] = torch.from_numpy(target)
            item["target_weight"] = torch.from_numpy(weight)
            item["joints"] = torch.from_numpy(np.concatenate([crop_joints, visible[:, None].astype(np.float32)], axis=1))
        return item
