"""PCKh and its MPII summary on a synthetic case with a known answer."""
import numpy as np
import pytest

from sharpose.data import MPII
from sharpose.evaluation import mpii_head_sizes, mpii_pckh, pckh


def synthetic(errors: np.ndarray):
    """4 people, 16 joints, ground truth at 100 + 10 k, predictions moved right by `errors` (4, 16)."""
    gt = np.zeros((4, 16, 2))
    gt[..., 0] = 100 + 10 * np.arange(16)
    gt[..., 1] = 50
    pred = gt.copy()
    pred[..., 0] += errors
    return pred, gt


def test_head_size_is_sixty_percent_of_the_head_box_diagonal():
    np.testing.assert_allclose(mpii_head_sizes(np.array([[0, 0, 30, 40], [10, 10, 13, 14]])), [30.0, 3.0])


def test_pckh_counts_visible_joints_within_half_a_head_size():
    head = np.full(4, 10.0)
    errors = np.zeros((4, 16))
    errors[:, 0] = [0, 4.9, 5.0, 5.1]  # <= 5 counts: 3 of 4
    errors[:, 1] = [6, 6, 6, 0]  # 1 of 4, but the miss in sample 3 is ...
    errors[:, 2] = [9, 9, 9, 9]
    visible = np.ones((4, 16))
    visible[3, 1] = 0  # ... not annotated: 0 of 3
    visible[:, 5] = 0  # never annotated: undefined
    pred, gt = synthetic(errors)
    result = pckh(pred, gt, visible, head)
    assert result[0] == pytest.approx(0.75)
    assert result[1] == 0.0
    assert result[2] == 0.0
    assert np.isnan(result[5])
    assert np.all(result[[3, 4] + list(range(6, 16))] == 1.0)
    assert pckh(pred, gt, visible, head, thr=1.0)[2] == 1.0


def test_mpii_summary():
    head = np.full(4, 10.0)
    errors = np.zeros((4, 16))
    names = MPII.keypoint_names
    errors[:, names.index("left_wrist")] = 100  # all wrong
    errors[:2, names.index("head_top")] = 100  # half wrong
    errors[:, names.index("pelvis")] = 100  # excluded from the mean
    errors[:, names.index("right_knee")] = 1.05  # 0.105 head sizes
    errors[:, names.index("right_ankle")] = 2.0  # 0.2 head sizes
    pred, gt = synthetic(errors)
    summary = mpii_pckh(pred, gt, np.ones((4, 16)), head)
    assert summary["Head"] == pytest.approx(50.0)
    assert summary["Wrist"] == pytest.approx(50.0)
    assert summary["Knee"] == pytest.approx(100.0)
    assert summary["Shoulder"] == summary["Ankle"] == pytest.approx(100.0)
    # 14 joints count equally: (12 * 100 + 50 + 0) / 14
    assert summary["PCKh"] == pytest.approx((12 * 100 + 50) / 14)
    # mmpose's 'PCKh@0.1' thresholds at 0.11: the right knee (0.105) counts, the right ankle (0.2) not
    assert summary["PCKh@0.1"] == pytest.approx((11 * 100 + 50) / 14)
