"""Heatmap decoding: argmax, DARK-UDP refinement, back-projection, flip-back."""
import numpy as np
import pytest
import torch

from sharpose.data import COCO, MPII, udp_heatmap_targets, udp_warp_matrix, warp_points
from sharpose.data.keypoints import flip_permutation
from sharpose.evaluation import (
    dark_udp_refine,
    decode_heatmaps,
    flip_back_heatmaps,
    heatmap_argmax,
    heatmap_to_image,
)

STRIDE = np.array([191 / 47, 255 / 63])


def random_targets(rng, n=4, sigma=2.0, margin=8):
    """UDP targets of joints at random sub-pixel positions away from the heatmap border."""
    hm = rng.uniform([margin, margin], [47 - margin, 63 - margin], size=(n, 17, 2))
    targets = np.stack([udp_heatmap_targets(j * STRIDE, np.ones(17), (256, 192), (64, 48), sigma)[0] for j in hm])
    return hm, targets


def test_argmax_marks_empty_heatmaps():
    heatmaps = torch.zeros(1, 2, 4, 5)
    heatmaps[0, 0, 3, 1] = 0.7
    coords, maxvals = heatmap_argmax(heatmaps)
    np.testing.assert_array_equal(coords[0].numpy(), [[1, 3], [-1, -1]])
    np.testing.assert_allclose(maxvals[0].numpy(), [0.7, 0.0])


def test_dark_udp_recovers_sub_pixel_peaks():
    rng = np.random.default_rng(0)
    hm, targets = random_targets(rng)
    coarse, _ = heatmap_argmax(torch.from_numpy(targets))
    assert np.abs(coarse.numpy() - hm).max() <= 0.5 + 1e-6
    refined = dark_udp_refine(coarse.numpy(), targets, blur_kernel=11)
    assert np.abs(refined - hm).max() < 0.02
    assert np.abs(refined - hm).mean() < 0.005


def test_dark_udp_leaves_its_input_and_empty_maps_alone():
    rng = np.random.default_rng(1)
    _, targets = random_targets(rng, n=1)
    targets[0, 3] = 0.0
    before = targets.copy()
    coarse, _ = heatmap_argmax(torch.from_numpy(targets))
    refined = dark_udp_refine(coarse.numpy(), targets)
    np.testing.assert_array_equal(targets, before)
    np.testing.assert_array_equal(refined[0, 3], [-1, -1])


def test_back_projection_inverts_the_crop_warp():
    rng = np.random.default_rng(2)
    center = rng.uniform(100, 500, (3, 2)).astype(np.float32)
    scale = rng.uniform(0.5, 2.5, (3, 2)).astype(np.float32)
    joints = center[:, None] + rng.uniform(-40, 40, (3, 17, 2))
    hm = np.stack([warp_points(j, udp_warp_matrix(c, s, 0.0, (192, 256))) for j, c, s in zip(joints, center, scale)])
    np.testing.assert_allclose(heatmap_to_image(hm / STRIDE, center, scale, (64, 48)), joints, rtol=1e-5, atol=1e-3)


def test_decode_heatmaps_returns_image_coordinates_and_scores():
    rng = np.random.default_rng(3)
    hm, targets = random_targets(rng, n=2)
    center = np.array([[300.0, 200.0], [50.0, 80.0]], np.float32)
    scale = np.array([[1.2, 1.6], [0.3, 0.4]], np.float32)
    keypoints = decode_heatmaps(torch.from_numpy(targets), torch.from_numpy(center), scale)
    assert keypoints.shape == (2, 17, 3) and keypoints.dtype == np.float32
    np.testing.assert_allclose(keypoints[..., :2], heatmap_to_image(hm, center, scale, (64, 48)), atol=0.1)
    np.testing.assert_allclose(keypoints[..., 2], targets.reshape(2, 17, -1).max(-1))


def test_flip_back_swaps_channels_and_mirrors_width():
    heatmaps = np.zeros((1, 17, 64, 48), np.float32)
    heatmaps[0, 1, 10, 5] = 1.0  # left eye at x=5 in the flipped crop
    back = flip_back_heatmaps(heatmaps)
    assert back[0, 2, 10, 42] == 1.0 and back.sum() == 1.0  # right eye at x = 47 - 5
    np.testing.assert_array_equal(flip_back_heatmaps(back), heatmaps)
    as_tensor = flip_back_heatmaps(torch.from_numpy(heatmaps))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), back)
    mpii_like = flip_back_heatmaps(np.zeros((1, 16, 4, 4)), flip_pairs=((0, 5),))
    assert mpii_like.shape == (1, 16, 4, 4)


def mirrored_name(name: str) -> str:
    for a, b in (("left", "right"), ("right", "left")):
        if name.startswith(a + "_"):
            return b + name[len(a):]
    return name


@pytest.mark.parametrize("info", [COCO, MPII], ids=["coco", "mpii"])
def test_flip_permutation_pairs_each_joint_with_its_mirror_by_name(info):
    """Mirroring maps each left joint to the right joint of the same name (and back), the middle joints
    to themselves: any other pairing, even one that undoes itself, fails."""
    names = info.keypoint_names
    expected = [names.index(mirrored_name(name)) for name in names]
    assert info.flip_indices.tolist() == expected
    assert flip_permutation(len(names), info.flip_pairs).tolist() == expected


def rotated_gaussians(centers: np.ndarray, sigmas: tuple[float, float], angles: np.ndarray, shape=(64, 48)):
    """(N, 1, H, W) anisotropic Gaussians with their main axis rotated by `angles` (radians)."""
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    maps = []
    for (cx, cy), angle in zip(centers, angles):
        c, s = np.cos(angle), np.sin(angle)
        u = c * (xs - cx) + s * (ys - cy)
        v = -s * (xs - cx) + c * (ys - cy)
        maps.append(np.exp(-0.5 * ((u / sigmas[0]) ** 2 + (v / sigmas[1]) ** 2)))
    return np.stack(maps)[:, None].astype(np.float32)


def test_dark_udp_on_rotated_anisotropic_gaussians():
    """The log of a blurred Gaussian is a quadratic whose Hessian has a cross term when the Gaussian
    is rotated: one Newton step from the integer maximum lands on the true centre only with the
    right cross derivative (round Gaussians have none)."""
    rng = np.random.default_rng(4)
    centers = rng.uniform([14, 18], [34, 46], size=(8, 2))
    angles = np.array([0.5, -0.5, 0.8, -0.8, 2.0, -2.2, 0.3, -1.1])
    heatmaps = rotated_gaussians(centers, (3.5, 1.5), angles)
    coarse, _ = heatmap_argmax(torch.from_numpy(heatmaps))
    refined = dark_udp_refine(coarse.numpy(), heatmaps, blur_kernel=11)
    assert np.abs(coarse.numpy()[:, 0] - centers).max() > 0.3, "the integer maxima are off the centres"
    # a quadratic's central differences are exact: what is left is OpenCV's sampled blur kernel
    assert np.abs(refined[:, 0] - centers).max() < 0.01
