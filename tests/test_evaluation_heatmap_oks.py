"""Heatmap OKS (SHaRPose's quality target) against the released instance_oks behaviour."""
import numpy as np
import pytest
import torch

from sharpose.data import COCO_SIGMAS, udp_heatmap_targets
from sharpose.evaluation import heatmap_argmax, heatmap_oks


def targets_for(joints: np.ndarray, visible: np.ndarray, input_size=(256, 192), sigma=2.0):
    heatmap_size = (input_size[0] // 4, input_size[1] // 4)
    pairs = [udp_heatmap_targets(j, v, input_size, heatmap_size, sigma) for j, v in zip(joints, visible)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1][:, 0] for p in pairs])


def test_ground_truth_grid_is_the_argmax_of_the_udp_target():
    # the released code takes the argmax of the target heatmap; heatmap_oks derives it from the joints
    rng = np.random.default_rng(0)
    joints = rng.uniform(-30, [222, 286], size=(32, 17, 2)).astype(np.float32)
    visible = np.ones((32, 17), np.float32)
    targets, weight = targets_for(joints, visible)
    oks, valid = heatmap_oks(targets, joints, weight > 0, np.ones((32, 2)))
    assert valid.all()
    torch.testing.assert_close(oks, torch.ones(32), rtol=0, atol=1e-6)


def test_released_formula_for_a_displaced_peak():
    # one counted joint (left shoulder), the predicted peak 2 px right and 1 px down on the heatmap
    joints = np.zeros((1, 17, 2), np.float32)
    joints[0, 5] = [20 * 191 / 47, 30 * 255 / 63]  # exactly on heatmap pixel (20, 30)
    visible = np.zeros((1, 17))
    visible[0, 5] = 1
    heatmaps = np.zeros((1, 17, 64, 48), np.float32)
    heatmaps[0, 5, 31, 22] = 1.0
    scale = np.array([[0.9, 1.2]])
    oks, valid = heatmap_oks(heatmaps, joints, visible, scale)
    w, h = scale[0] * 200
    # released: heatmap x step w / 64 and y step h / 48 (height and width swapped, non-UDP)
    d2 = (2 * w / 64) ** 2 + (1 * h / 48) ** 2
    expected = np.exp(-d2 / (2 * COCO_SIGMAS[5]) ** 2 / (w * h + np.spacing(1)) / 2)
    assert valid.tolist() == [True]
    assert oks.item() == pytest.approx(expected, rel=1e-6)
    # the image-space alternative uses UDP steps w / 47, h / 63 and the exact joint
    exact, _ = heatmap_oks(heatmaps, joints, visible, scale, released=False)
    d2 = (2 * w / 47) ** 2 + (1 * h / 63) ** 2
    assert exact.item() == pytest.approx(np.exp(-d2 / (2 * COCO_SIGMAS[5]) ** 2 / (w * h) / 2), rel=1e-6)


def test_mean_over_counted_joints_and_invalid_instances():
    rng = np.random.default_rng(1)
    joints = rng.uniform(20, 170, size=(3, 17, 2)).astype(np.float32)
    visible = (rng.random((3, 17)) < 0.6).astype(np.float32)
    visible[2] = 0
    targets, weight = targets_for(joints, visible)
    noisy = targets + rng.normal(0, 0.5, targets.shape).astype(np.float32)
    oks, valid = heatmap_oks(torch.from_numpy(noisy), joints, weight > 0, np.full((3, 2), 1.0))
    assert valid.tolist() == [True, True, False] and oks[2] == 0.0
    assert oks.dtype == torch.float32 and 0.0 < oks[0] < 1.0
    # per-joint OKS from the two argmaxes, averaged over the counted joints of instance 0
    pred = heatmap_argmax(torch.from_numpy(noisy))[0][0].numpy()
    gt = heatmap_argmax(torch.from_numpy(targets))[0][0].numpy()
    d2 = (((pred - gt) * 200 / np.array([64, 48])) ** 2).sum(-1)
    per_joint = np.exp(-d2 / (2 * COCO_SIGMAS) ** 2 / (200 * 200 + np.spacing(1)) / 2)
    assert oks[0].item() == pytest.approx(per_joint[weight[0] > 0].mean(), rel=1e-6)
