"""Models and datasets from a Config (shared by training and evaluation)."""
from __future__ import annotations

import torch.nn as nn

import sys

from sharpose.data import COCO, MPII, CocoTopDownDataset, DataError, MpiiTopDownDataset, TopDownDataset
from sharpose.engine.config import Config, ConfigError
from sharpose.models import create_model


def build_model(config: Config) -> nn.Module:
    """The config's model; ConfigError when it cannot be built or its input size differs from the data's."""
    try:
        model = create_model(config.model.name, **config.model.overrides)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{config.source}: model: {err}") from err
    keypoints = (MPII if config.data.dataset == "mpii" else COCO).num_keypoints
    if model.num_keypoints != keypoints:
        raise ConfigError(
            f"{config.source}: model {config.model.name} predicts {model.num_keypoints} keypoints but "
            f"data.dataset {config.data.dataset} has {keypoints}: set model.overrides.num_keypoints: {keypoints} "
            "(a model trained on the other dataset cannot be scored on this one)"
        )
    if tuple(model.input_size) != tuple(config.data.input_size):
        raise ConfigError(
            f"{config.source}: data.input_size {list(config.data.input_size)} differs from the model's "
            f"input_size {list(model.input_size)} (set model.overrides.input_size or data.input_size)"
        )
    return model


def checked(dataset: TopDownDataset, ann_file: object, key: str) -> TopDownDataset:
    """Report the annotations the loader left out (stderr), and refuse a dataset with no sample."""
    note = dataset.describe_skipped()
    if len(dataset) == 0:
        raise DataError(f"{key} {ann_file} gives no usable person sample" + (f" ({note})" if note else "")
                        + "; check the file's 'annotations' (or the detections)")
    if note:
        print(f"sharpose: note: {ann_file}: {len(dataset)} samples; {note}", file=sys.stderr)
    return dataset


def build_train_dataset(config: Config) -> TopDownDataset:
    """Training samples (GT boxes, augmentation as configured)."""
    data = config.data
    common = dict(input_size=data.input_size, sigma=data.sigma, augmentation=data.augmentation)
    ann_file = config.data_path(data.train_ann)
    cls = MpiiTopDownDataset if data.dataset == "mpii" else CocoTopDownDataset
    return checked(cls(ann_file, config.data_path(data.train_images), **common), ann_file, "data.train_ann")


def build_val_dataset(config: Config) -> TopDownDataset:
    """Evaluation samples: GT boxes or detections (COCO), no augmentation."""
    data, ev = config.data, config.eval
    common = dict(input_size=data.input_size, sigma=data.sigma)
    ann_file = config.data_path(data.val_ann)
    if data.dataset == "mpii":
        dataset: TopDownDataset = MpiiTopDownDataset(ann_file, config.data_path(data.val_images), **common)
    else:
        dataset = CocoTopDownDataset(
            ann_file,
            config.data_path(data.val_images),
            use_gt_bbox=ev.use_gt_bbox,
            bbox_file=None if ev.bbox_file is None else config.data_path(ev.bbox_file),
            det_bbox_thr=ev.det_bbox_thr,
            **common,
        )
    return checked(dataset, ann_file, "data.val_ann")
