"""Models and datasets from a Config (shared by training and evaluation)."""
from __future__ import annotations

import torch.nn as nn

from sharpose.data import CocoTopDownDataset, MpiiTopDownDataset, TopDownDataset
from sharpose.engine.config import Config, ConfigError
from sharpose.models import create_model


def build_model(config: Config) -> nn.Module:
    """The config's model; ConfigError when it cannot be built or its input size differs from the data's."""
    try:
        model = create_model(config.model.name, **config.model.overrides)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{config.source}: model: {err}") from err
    if tuple(model.input_size) != tuple(config.data.input_size):
        raise ConfigError(
            f"{config.source}: data.input_size {list(config.data.input_size)} differs from the model's "
            f"input_size {list(model.input_size)} (set model.overrides.input_size or data.input_size)"
        )
    return model


def build_train_dataset(config: Config) -> TopDownDataset:
    """Training samples (GT boxes, augmentation as configured)."""
    data = config.data
    common = dict(input_size=data.input_size, sigma=data.sigma, augmentation=data.augmentation)
    if data.dataset == "mpii":
        return MpiiTopDownDataset(config.data_path(data.train_ann), config.data_path(data.train_images), **common)
    return CocoTopDownDataset(config.data_path(data.train_ann), config.data_path(data.train_images), **common)


def build_val_dataset(config: Config) -> TopDownDataset:
    """Evaluation samples: GT boxes or detections (COCO), no augmentation."""
    data, ev = config.data, config.eval
    common = dict(input_size=data.input_size, sigma=data.sigma)
    if data.dataset == "mpii":
        return MpiiTopDownDataset(config.data_path(data.val_ann), config.data_path(data.val_images), **common)
    return CocoTopDownDataset(
        config.data_path(data.val_ann),
        config.data_path(data.val_images),
        use_gt_bbox=ev.use_gt_bbox,
        bbox_file=None if ev.bbox_file is None else config.data_path(ev.bbox_file),
        det_bbox_thr=ev.det_bbox_thr,
        **common,
    )
