"""Training augmentation of the top-down pipeline (mmpose 0.x, as configured by ViTPose/SHaRPose).

Order and constants follow the released SHaRPose train pipeline: TopDownRandomShiftBboxCenter
(0.16, p 0.3) -> TopDownRandomFlip (p 0.5) -> TopDownHalfBodyTransform (8 joints, p 0.3) ->
TopDownGetRandomScaleRotation (scale 0.5, rotation 40, rotation p 0.6). All randomness comes from
the numpy Generator passed in, so a sample is reproducible from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sharpose.data.keypoints import KeypointInfo
from sharpose.data.transforms import PIXEL_STD, flip_joints, half_body_center_scale


@dataclass
class AugmentedSample:
    image: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    rotation: float
    joints: np.ndarray
    visible: np.ndarray
    flipped: bool


@dataclass(frozen=True)
class Augmentation:
    """Random box shift, flip, half-body crop, scale and rotation; defaults are mmpose 0.x's."""

    shift_factor: float = 0.16
    shift_prob: float = 0.3
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    num_joints_half_body: int = 8
    half_body_padding: float = 1.5
    scale_factor: float = 0.5
    rot_factor: float = 40.0
    rot_prob: float = 0.6

    def __call__(
        self,
        rng: np.random.Generator,
        image: np.ndarray,
        center: np.ndarray,
        scale: np.ndarray,
        joints: np.ndarray,
        visible: np.ndarray,
        info: KeypointInfo,
        aspect_ratio: float,
    ) -> AugmentedSample:
        """Augment one sample; `image` is (H, W, C), `joints` (K, 2) and `visible` (K,) in image pixels."""
        center, scale = center.copy(), scale.copy()
        if rng.random() < self.shift_prob:
            # The shift is relative to the padded box (scale * PIXEL_STD), as mmpose does.
            center += rng.uniform(-1.0, 1.0, 2) * self.shift_factor * scale * PIXEL_STD

        flipped = bool(rng.random() <= self.flip_prob)
        if flipped:
            width = image.shape[1]
            image = image[:, ::-1]
            joints, visible = flip_joints(joints, visible, width, info.flip_indices)
            center[0] = width - center[0] - 1

        if visible.sum() > self.num_joints_half_body and rng.random() < self.half_body_prob:
            # mmpose compares a *normal* draw with 0.5 here (so the upper body wins ~69% of the time).
            half = half_body_center_scale(
                joints, visible, info.upper_body_ids, aspect_ratio,
                pick_upper=bool(rng.standard_normal() < 0.5), padding=self.half_body_padding,
            )
            if half is not None:
                center, scale = half

        sf, rf = self.scale_factor, self.rot_factor
        scale = scale * np.float32(np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))
        rotation = float(np.clip(rng.standard_normal() * rf, -2.0 * rf, 2.0 * rf))
        if rng.random() > self.rot_prob:
            rotation = 0.0
        return AugmentedSample(np.ascontiguousarray(image), center, scale, rotation, joints, visible, flipped)
