"""MPII top-down dataset on mpii-mini (mmpose json layout and 0.x conventions)."""
import json

import numpy as np
import pytest
import torch

from sharpose.data import MPII, MpiiTopDownDataset

from helpers import DATA_DIR

MPII_MINI = DATA_DIR / "mpii-mini"
ANN = MPII_MINI / "annotations" / "test_mpii.json"


@pytest.fixture(scope="module")
def dataset() -> MpiiTopDownDataset:
    return MpiiTopDownDataset(ANN, MPII_MINI / "images")


def test_loads_five_people(dataset):
    assert len(dataset) == 5
    assert not dataset.skipped
    np.testing.assert_array_equal(dataset.records.visible.sum(axis=1), [16, 16, 14, 14, 16])


def test_center_scale_and_joints_follow_mmpose_conventions(dataset):
    entry = json.loads(ANN.read_text())[0]
    s = entry["scale"]
    # centre moved down by 15 * scale, scale padded by 1.25, square box; MATLAB 1-based -> 0-based
    np.testing.assert_allclose(
        dataset.records.centers[0], [entry["center"][0] - 1, entry["center"][1] + 15 * s - 1], rtol=1e-6
    )
    np.testing.assert_allclose(dataset.records.scales[0], [1.25 * s, 1.25 * s], rtol=1e-6)
    np.testing.assert_allclose(dataset.records.joints[0], np.array(entry["joints"]) - 1, rtol=1e-6)


def test_item_layout(dataset):
    item = dataset[1]
    assert item["image"].shape == (3, 256, 256) and item["image"].dtype == torch.float32
    assert item["target"].shape == (16, 64, 64)
    assert item["target_weight"].shape == (16, 1) and item["joints"].shape == (16, 3)
    assert item["image_id"] == 1
    assert item["target_weight"].sum() > 10


def test_mpii_flip_pairs_are_left_right():
    names = MPII.keypoint_names
    for a, b in MPII.flip_pairs:
        assert names[a].replace("right", "left") == names[b]
    assert set(MPII.upper_body_ids) | set(MPII.lower_body_ids) == set(range(16))
