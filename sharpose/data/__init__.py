"""Top-down pose data pipeline (mmpose 0.x conventions, as used by ViTPose and SHaRPose)."""
from sharpose.data.augment import Augmentation, AugmentedSample
from sharpose.data.coco import CocoTopDownDataset
from sharpose.data.io import DataError, load_json, read_image
from sharpose.data.keypoints import COCO, COCO_SIGMAS, MPII, KeypointInfo
from sharpose.data.mpii import MpiiTopDownDataset
from sharpose.data.targets import udp_heatmap_targets
from sharpose.data.topdown import IMAGENET_MEAN, IMAGENET_STD, TopDownDataset, TopDownRecords, normalize_image
from sharpose.data.transforms import (
    PIXEL_STD,
    box_to_center_scale,
    flip_joints,
    half_body_center_scale,
    udp_warp_matrix,
    warp_image,
    warp_points,
)

__all__ = [
    "COCO",
    "COCO_SIGMAS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MPII",
    "PIXEL_STD",
    "Augmentation",
    "AugmentedSample",
    "CocoTopDownDataset",
    "DataError",
    "KeypointInfo",
    "MpiiTopDownDataset",
    "TopDownDataset",
    "TopDownRecords",
    "box_to_center_scale",
    "flip_joints",
    "half_body_center_scale",
    "load_json",
    "normalize_image",
    "read_image",
    "udp_heatmap_targets",
    "udp_warp_matrix",
    "warp_image",
    "warp_points",
]
