"""COCO top-down dataset on coco-mini: sample counts, item layout, boxes and targets."""
import json

import numpy as np
import pytest
import torch

from sharpose.data import COCO, CocoTopDownDataset, box_to_center_scale

from helpers import DATA_DIR

COCO_MINI = DATA_DIR / "coco-mini"
ANN = COCO_MINI / "annotations" / "test_coco.json"
IMAGES = COCO_MINI / "images"
DETS = COCO_MINI / "person_detection_results" / "test_coco_det_AP_H_56.json"


@pytest.fixture(scope="module")
def gt_dataset() -> CocoTopDownDataset:
    return CocoTopDownDataset(ANN, IMAGES)


def test_gt_mode_has_one_sample_per_person_with_keypoints(gt_dataset):
    assert len(gt_dataset) == 12
    # the two annotations with num_keypoints == 0 are counted, not loaded
    assert gt_dataset.skipped == {"no_keypoints": 2}
    assert sorted(set(gt_dataset.records.image_ids.tolist())) == [785, 40083, 196141, 197388]


@pytest.mark.parametrize("thr, expected", [(0.0, 118), (0.3, 33)])
def test_detection_mode_keeps_boxes_above_threshold(thr, expected):
    ds = CocoTopDownDataset(ANN, IMAGES, use_gt_bbox=False, bbox_file=DETS, det_bbox_thr=thr)
    assert len(ds) == expected
    assert ds.skipped.get("below_threshold", 0) == 118 - expected
    item = ds[0]
    assert item["image"].shape == (3, 256, 192)
    assert "target" not in item and "joints" not in item  # detections carry no keypoints
    assert 0.0 <= item["bbox_score"] <= 1.0


@pytest.mark.parametrize("input_size", [(256, 192), (384, 288)])
def test_item_layout(input_size):
    ds = CocoTopDownDataset(ANN, IMAGES, input_size=input_size, sigma=2.0 if input_size[0] == 256 else 3.0)
    item = ds[3]
    h, w = input_size
    assert item["image"].shape == (3, h, w) and item["image"].dtype == torch.float32
    assert item["target"].shape == (17, h // 4, w // 4) and item["target"].dtype == torch.float32
    assert item["target_weight"].shape == (17, 1) and item["target_weight"].dtype == torch.float32
    assert item["joints"].shape == (17, 3) and item["joints"].dtype == torch.float32
    assert item["center"].shape == (2,) and item["scale"].shape == (2,)
    assert isinstance(item["image_id"], int) and item["image_file"].endswith(".jpg")
    assert item["rotation"] == 0.0 and item["bbox_score"] == 1.0
    assert item["area"] == pytest.approx(float(np.prod(item["scale"].double().numpy() * 200.0)))
    # ImageNet-normalised: roughly zero-centred, a few std wide
    assert -3.0 < item["image"].mean().item() < 3.0 and item["image"].std().item() > 0.1


def test_gt_box_is_cleaned_then_aspect_fixed_and_padded(gt_dataset):
    # annotation 442619 (image 785, 640x425): bbox [280.79, 44.73, 218.7, 346.68]
    x, y, w, h = 280.79, 44.73, 218.7, 346.68
    clean = (x, y, min(639.0, x + w - 1) - x, min(424.0, y + h - 1) - y)
    center, scale = box_to_center_scale(clean, 192 / 256, 1.25)
    np.testing.assert_allclose(gt_dataset.records.centers[0], center)
    np.testing.assert_allclose(gt_dataset.records.scales[0], scale)
    # the aspect fix widened the box to 3:4
    assert scale[0] / scale[1] == pytest.approx(0.75)
    np.testing.assert_allclose(center, [x + clean[2] / 2, y + clean[3] / 2], rtol=1e-6)


def test_targets_peak_at_the_keypoints(gt_dataset):
    stride = np.array([191 / 47, 255 / 63])  # UDP: pixel intervals of input / heatmap
    checked = 0
    for i in range(len(gt_dataset)):
        item = gt_dataset[i]
        joints, target, weight = item["joints"].numpy(), item["target"].numpy(), item["target_weight"].numpy()[:, 0]
        np.testing.assert_array_equal(weight > 0, (joints[:, 2] > 0) & (target.max(axis=(1, 2)) > 0))
        for k in np.flatnonzero(weight):
            expected = np.clip(np.round(joints[k, :2] / stride), 0, [47, 63])
            peak = np.unravel_index(target[k].argmax(), target[k].shape)[::-1]
            assert np.abs(np.array(peak) - expected).max() <= 1, (i, k)
            checked += 1
        assert np.all(target[weight == 0] == 0)
    assert checked > 150


def test_visible_keypoints_match_annotations(gt_dataset):
    # COCO visibility 1 (labelled, occluded) and 2 (visible) both become 1
    anns = [a for a in json.loads(ANN.read_text())["annotations"] if a["num_keypoints"] > 0]
    np.testing.assert_array_equal(gt_dataset.records.visible.sum(axis=1), [a["num_keypoints"] for a in anns])
    assert set(np.unique(gt_dataset.records.visible).tolist()) == {0.0, 1.0}


def test_flip_pairs_are_left_right():
    names = COCO.keypoint_names
    for left, right in COCO.flip_pairs:
        assert names[left].replace("left", "right") == names[right]
