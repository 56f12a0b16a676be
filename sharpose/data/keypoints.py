"""Keypoint metadata of the COCO (17 joints) and MPII (16 joints) skeletons.

Index conventions follow the datasets' own files (and mmpose 0.x): COCO in the order of
`categories[0].keypoints` of person_keypoints_*.json, MPII in the order of mmpose's mpii_*.json.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KeypointInfo:
    """What the pipeline needs to know about a skeleton.

    `flip_pairs` are (left, right) index pairs swapped by a horizontal flip; `upper_body_ids` choose
    the half-body crop (every other joint is lower body); `sigmas` are the per-keypoint OKS
    constants (None where the dataset defines none).
    """

    name: str
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    upper_body_ids: tuple[int, ...]
    sigmas: np.ndarray | None = None

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def lower_body_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_keypoints) if i not in self.upper_body_ids)

    @property
    def flip_indices(self) -> np.ndarray:
        return flip_permutation(self.num_keypoints, self.flip_pairs)


def flip_permutation(num_keypoints: int, flip_pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Permutation p such that a mirrored skeleton's joint k is the original joint p[k] (an involution)."""
    perm = np.arange(num_keypoints)
    for left, right in flip_pairs:
        perm[left], perm[right] = right, left
    return perm


# COCO keypoint OKS constants (cocoapi's kpt_oks_sigmas).
COCO_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
) / 10.0
COCO_SIGMAS.setflags(write=False)

COCO = KeypointInfo(
    name="coco",
    keypoint_names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
        "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # The 1-based skeleton of the COCO annotation files, made 0-based.
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
        (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    upper_body_ids=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    sigmas=COCO_SIGMAS,
)

# MPII OKS constants as mmpose's MPII dataset info sets them (adapted from COCO's: ankle, knee, hip like
# COCO's; pelvis, thorax, neck, head 0.026; wrists, elbows, shoulders like COCO's), for SHaRPose's quality loss.
MPII_SIGMAS = np.array(
    [0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062, 0.072, 0.179, 0.179, 0.072, 0.062]
)
MPII_SIGMAS.setflags(write=False)

MPII = KeypointInfo(
    name="mpii",
    keypoint_names=(
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
        "pelvis", "thorax", "upper_neck", "head_top",
        "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=(
        (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
        (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15),
    ),
    upper_body_ids=(7, 8, 9, 10, 11, 12, 13, 14, 15),
    sigmas=MPII_SIGMAS,
)
