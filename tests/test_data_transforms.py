"""Geometry, augmentation and targets: flips, the UDP warp, half-body crops, reproducibility."""
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sharpose.data import (
    COCO,
    Augmentation,
    TopDownDataset,
    TopDownRecords,
    box_to_center_scale,
    flip_joints,
    half_body_center_scale,
    udp_heatmap_targets,
    udp_warp_matrix,
    warp_image,
    warp_points,
)
from sharpose.evaluation import flip_back_heatmaps

NO_AUG = dict(shift_prob=0.0, flip_prob=0.0, half_body_prob=0.0, scale_factor=0.0, rot_prob=0.0)


def test_box_to_center_scale_fixes_aspect_and_pads():
    center, scale = box_to_center_scale((10, 20, 100, 50), aspect_ratio=0.75, padding=1.25)
    np.testing.assert_allclose(center, [60, 45])
    # too wide for 3:4 -> height grows to 100 / 0.75
    np.testing.assert_allclose(scale, np.array([100, 100 / 0.75]) / 200 * 1.25, rtol=1e-6)
    assert center.dtype == scale.dtype == np.float32


def test_udp_warp_maps_box_centre_to_crop_centre_and_box_edges_to_crop_edges():
    center, scale = np.array([300.0, 200.0]), np.array([1.0, 4 / 3])
    m = udp_warp_matrix(center, scale, 0.0, (192, 256))
    corners = np.array([[200.0, 200 - 400 / 3], [400.0, 200 + 400 / 3], [300.0, 200.0]])
    np.testing.assert_allclose(warp_points(corners, m), [[0, 0], [191, 255], [95.5, 127.5]], atol=1e-3)


def test_flip_twice_is_identity():
    rng = np.random.default_rng(0)
    joints = rng.uniform(0, 500, (17, 2)).astype(np.float32)
    visible = (rng.random(17) < 0.7).astype(np.float32)
    once = flip_joints(joints, visible, 640, COCO.flip_indices)
    twice = flip_joints(*once, 640, COCO.flip_indices)
    np.testing.assert_array_equal(twice[1], visible)
    np.testing.assert_allclose(twice[0], joints * visible[:, None], atol=1e-4)
    # left and right swap: the flipped left eye is the mirrored right eye
    if visible[2]:
        np.testing.assert_allclose(once[0][1], [639 - joints[2, 0], joints[2, 1]])


def dot_dataset(tmp_path, joint: int, xy: tuple[int, int], augmentation, size=(640, 480)):
    """A one-sample dataset whose image is black but for a bright 3x3 dot at joint `joint`."""
    image = np.zeros((size[1], size[0], 3), np.uint8)
    x, y = xy
    image[y - 1 : y + 2, x - 1 : x + 2] = 255
    path = tmp_path / "dot.png"
    cv2.imwrite(str(path), image)
    joints = np.zeros((1, 17, 2), np.float32)
    visible = np.zeros((1, 17), np.float32)
    joints[0, joint] = xy
    visible[0, joint] = 1
    center, scale = box_to_center_scale((150, 60, 240, 320), 0.75)
    records = TopDownRecords(
        np.array([str(path)]), np.array([1]), center[None], scale[None], np.ones(1), joints, visible
    )
    return TopDownDataset(records, COCO, input_size=(256, 192), augmentation=augmentation)


def dot_position(image: torch.Tensor) -> np.ndarray:
    """Intensity-weighted centroid (x, y) of the bright pixels of a normalised crop."""
    brightness = image.mean(0).numpy()
    brightness = np.clip(brightness - brightness.min(), 0, None)
    brightness[brightness < 0.25 * brightness.max()] = 0
    ys, xs = np.mgrid[: brightness.shape[0], : brightness.shape[1]]
    return np.array([(xs * brightness).sum(), (ys * brightness).sum()]) / brightness.sum()


def test_flip_moves_the_dot_with_the_swapped_joint(tmp_path):
    ds = dot_dataset(tmp_path, joint=9, xy=(300, 250), augmentation=Augmentation(**{**NO_AUG, "flip_prob": 1.0}))
    item = ds.get_sample(0, np.random.default_rng(0))
    joints = item["joints"].numpy()
    # the left wrist (9) became the right wrist (10)
    assert joints[10, 2] == 1 and joints[9, 2] == 0
    np.testing.assert_allclose(dot_position(item["image"]), joints[10, :2], atol=0.5)
    # the crop of the mirrored image is the mirror of the crop, exactly (UDP: no half-pixel shift)
    plain = dot_dataset(tmp_path, joint=9, xy=(300, 250), augmentation=None).get_sample(0)
    np.testing.assert_allclose(
        flip_back_heatmaps(item["target"][None])[0].numpy(), plain["target"].numpy(), atol=1e-6
    )
    np.testing.assert_allclose(item["image"].flip(-1).numpy(), plain["image"].numpy(), atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_rotation_and_scale_move_the_dot_with_the_joint(tmp_path, seed):
    aug = Augmentation(shift_prob=1.0, flip_prob=0.0, half_body_prob=0.0, rot_prob=1.0)
    ds = dot_dataset(tmp_path, joint=0, xy=(270, 200), augmentation=aug)
    item = ds.get_sample(0, np.random.default_rng(seed))
    assert item["rotation"] != 0.0
    np.testing.assert_allclose(dot_position(item["image"]), item["joints"][0, :2].numpy(), atol=0.5)
    # the target peaks at the warped joint too
    stride = np.array([191 / 47, 255 / 63])
    peak = np.unravel_index(item["target"][0].argmax().item(), (64, 48))[::-1]
    np.testing.assert_allclose(peak, np.round(item["joints"][0, :2].numpy() / stride), atol=1)


def test_warp_with_identity_box_reproduces_the_image():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (256, 192, 3), dtype=np.uint8)
    # a box of exactly the image: UDP maps pixel centres onto pixel centres
    center, scale = np.array([95.5, 127.5]), np.array([191 / 200, 255 / 200])
    crop = warp_image(image, udp_warp_matrix(center, scale, 0.0, (192, 256)), (192, 256))
    np.testing.assert_array_equal(crop, image)


def test_half_body_selects_upper_or_lower_joints():
    joints = np.arange(34, dtype=np.float32).reshape(17, 2) * 10
    visible = np.ones(17, np.float32)
    center, scale = half_body_center_scale(joints, visible, COCO.upper_body_ids, 0.75, pick_upper=True)
    np.testing.assert_allclose(center, joints[:11].mean(0))
    w, h = joints[:11].max(0) - joints[:11].min(0)
    np.testing.assert_allclose(scale, np.array([max(w, 0.75 * h), max(h, w / 0.75)]) / 200 * 1.5, rtol=1e-6)
    center, _ = half_body_center_scale(joints, visible, COCO.upper_body_ids, 0.75, pick_upper=False)
    np.testing.assert_allclose(center, joints[11:].mean(0))
    # only two upper joints visible: the lower body is used even when the upper is asked for
    visible[2:11] = 0
    center, _ = half_body_center_scale(joints, visible, COCO.upper_body_ids, 0.75, pick_upper=True)
    np.testing.assert_allclose(center, joints[11:].mean(0))
    # fewer than two joints anywhere: no half-body crop
    visible[:] = 0
    visible[3] = 1
    assert half_body_center_scale(joints, visible, COCO.upper_body_ids, 0.75, pick_upper=True) is None


def test_udp_targets_weight_zero_only_when_the_gaussian_misses_the_heatmap():
    joints = np.array([[95.5, 127.5], [-30.0, 100.0], [-20.0, 100.0], [191 + 30, 100.0], [50.0, 50.0]], np.float32)
    visible = np.array([1, 1, 1, 1, 0], np.float32)
    target, weight = udp_heatmap_targets(joints, visible, (256, 192), (64, 48), sigma=2.0)
    # x / stride: -7.4 -> window [-12, 1) reaches column 0; -4.9 -> inside; 54.4 -> window starts at 48
    np.testing.assert_array_equal(weight[:, 0], [1, 1, 1, 0, 0])
    # (95.5, 127.5) is (23.5, 31.5) on the heatmap: the peak is off-grid, half a pixel from 4 pixels
    assert target[0].max() == pytest.approx(np.exp(-(0.5**2 + 0.5**2) / 8), rel=1e-6)
    assert target[3].max() == 0 and target[4].max() == 0
    assert target[1, :, 1:].max() == 0 and target[1, :, 0].max() > 0


def test_augmentation_is_reproducible_from_torch_seed(tmp_path):
    aug = Augmentation(shift_prob=1.0, rot_prob=1.0)
    ds = dot_dataset(tmp_path, joint=0, xy=(270, 200), augmentation=aug)
    torch.manual_seed(3)
    first = ds[0]
    torch.manual_seed(3)
    again = ds[0]
    torch.manual_seed(4)
    other = ds[0]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["center"], again["center"])
    assert not torch.equal(first["center"], other["center"])


def test_dataloader_workers_are_reproducible(tmp_path):
    ds = dot_dataset(tmp_path, joint=0, xy=(270, 200), augmentation=Augmentation(shift_prob=1.0, rot_prob=1.0))
    ds.records = TopDownRecords(*(np.repeat(v, 4, axis=0) for v in vars(ds.records).values()))

    def epoch(seed: int) -> torch.Tensor:
        loader = DataLoader(ds, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(seed))
        return torch.cat([batch["joints"] for batch in loader])

    a, b = epoch(0), epoch(0)
    assert torch.equal(a, b)
    assert len({tuple(j[0, :2].tolist()) for j in a}) == 4  # every sample augmented differently
