"""MPII Human Pose, top-down (mmpose 0.x TopDownMpiiDataset), from mmpose's mpii_*.json files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sharpose.data.augment import Augmentation
from sharpose.data.io import DataError, load_json
from sharpose.data.keypoints import MPII
from sharpose.data.topdown import TopDownDataset, TopDownRecords


class MpiiTopDownDataset(TopDownDataset):
    """One sample per entry of an mmpose/HRNet MPII json: a list of
    {image, center [x, y], scale (person height / 200), joints [[x, y]] * 16, joints_vis [0/1] * 16}.

    Conventions of mmpose 0.x: the centre is moved down by 15 * scale px and the scale padded by 1.25
    (unless center[0] == -1), the box is square (scale used for both sides, no aspect fix: MPII is
    trained at 256x256), and the 1-based MATLAB coordinates of centre and joints are made 0-based.
    `image_id` is the entry's index in the file.

    Bad data: unreadable/invalid JSON, a missing field, a non-numeric or non-finite value or a joint
    count other than 16: DataError naming the file, the entry and the value. A missing image:
    DataError naming the file when the sample is loaded. MPII boxes carry no image size, so joints
    are used as given (the target weight drops those far outside the crop); `skipped` stays empty.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        *,
        input_size: tuple[int, int] = (256, 256),
        sigma: float = 2.0,
        augmentation: Augmentation | None = None,
    ) -> None:
        self.ann_file = Path(ann_file)
        entries = load_json(self.ann_file, "MPII annotation file")
        if not isinstance(entries, list):
            raise DataError(f"MPII annotation file {self.ann_file} must be a JSON list of persons")
        records = _records(entries, self.ann_file, Path(image_dir))
        super().__init__(records, MPII, input_size=input_size, sigma=sigma, augmentation=augmentation)


def _array(entry: dict, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        array = np.asarray(entry[key], dtype=np.float64)
    except KeyError as err:
        raise DataError(f"{where}: missing '{key}'") from err
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: '{key}' is not numeric: {entry[key]!r}") from err
    if array.shape != shape:
        raise DataError(f"{where}: '{key}' has shape {array.shape}, expected {shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{where}: '{key}' has non-finite values")
    return array


def _records(entries: list[Any], ann_file: Path, image_dir: Path) -> TopDownRecords:
    k = MPII.num_keypoints
    files, centers, scales, joints, visible = [], [], [], [], []
    for i, entry in enumerate(entries):
        where = f"{ann_file}: entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DataError(f"{where} needs an 'image' file name")
        where = f"{where} ({entry['image']})"
        center = _array(entry, "center", (2,), where)
        scale = np.full(2, float(_array(entry, "scale", (), where)))
        if center[0] != -1:
            center[1] += 15 * scale[1]
            scale *= 1.25
        files.append(str(image_dir / entry["image"]))
        centers.append(center - 1.0)
        scales.append(scale)
        joints.append(_array(entry, "joints", (k, 2), where) - 1.0)
        visible.append(_array(entry, "joints_vis", (k,), where))
    return TopDownRecords.from_lists(files, np.arange(len(files)), centers, scales, joints=joints, visible=visible,
                                     num_keypoints=k)
