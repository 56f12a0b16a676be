"""Decoding heatmaps to keypoints and scoring them (COCO AP/AR, MPII PCKh, heatmap OKS)."""
from sharpose.evaluation.coco_metric import (
    STATS_NAMES,
    coco_keypoint_metrics,
    coco_results,
    evaluate_coco_results,
    load_coco,
    rescored,
    write_coco_results,
)
from sharpose.evaluation.decode import (
    dark_udp_refine,
    decode_heatmaps,
    flip_back_heatmaps,
    heatmap_argmax,
    heatmap_to_image,
)
from sharpose.evaluation.heatmap_oks import heatmap_oks
from sharpose.evaluation.nms import oks_iou, oks_nms, soft_oks_nms
from sharpose.evaluation.pckh import mpii_head_sizes, mpii_pckh, pckh

__all__ = [
    "STATS_NAMES",
    "coco_keypoint_metrics",
    "coco_results",
    "dark_udp_refine",
    "decode_heatmaps",
    "evaluate_coco_results",
    "flip_back_heatmaps",
    "heatmap_argmax",
    "heatmap_oks",
    "heatmap_to_image",
    "load_coco",
    "mpii_head_sizes",
    "mpii_pckh",
    "oks_iou",
    "oks_nms",
    "pckh",
    "rescored",
    "soft_oks_nms",
    "write_coco_results",
]
