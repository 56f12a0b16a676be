"""The same image selects the same patches, every run: the tie rule of the patch ranking, and (on a
GPU) bitwise-identical outputs of two forwards."""
import math

import pytest
import torch

from sharpose import create_model
from sharpose.models.selection import rank_patches


def test_ties_rank_the_lower_patch_index_first():
    scores = torch.tensor([
        [0.5, 0.9, 0.5, 0.9, 0.1, 0.5],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.3, 0.2, 0.3, 0.2, 0.3, 0.2],
    ])
    expected = torch.tensor([
        [1, 3, 0, 2, 5, 4],
        [0, 1, 2, 3, 4, 5],
        [0, 2, 4, 1, 3, 5],
    ])
    assert torch.equal(rank_patches(scores), expected)


def test_tie_rule_holds_on_long_rows():
    """Rows as long as the coarse grids (48 and 108 patches) with few distinct values: sorting
    algorithms switch strategy with the length, the rule must not."""
    for n in (48, 108, 1000):
        scores = torch.randint(0, 4, (8, n)).float()
        order = rank_patches(scores)
        ranked = scores.gather(1, order)
        assert (ranked[:, :-1] >= ranked[:, 1:]).all()
        ties = ranked[:, :-1] == ranked[:, 1:]
        assert (order[:, :-1][ties] < order[:, 1:][ties]).all()


def test_nan_scores_rank_last_and_the_ranking_stays_a_permutation():
    scores = torch.tensor([[0.2, math.nan, 0.7, math.nan, -math.inf, math.inf]])
    assert rank_patches(scores).tolist() == [[5, 2, 0, 1, 3, 4]]


@pytest.mark.parametrize("n", [1, 2, 48, 108])
def test_ranking_is_a_stable_descending_sort(n):
    """The counted ranking agrees with the stable sort it replaces (which ONNX cannot export)."""
    for scores in (torch.randn(16, n), torch.randint(0, 3, (16, n)).float(), torch.zeros(16, n)):
        assert torch.equal(rank_patches(scores), scores.argsort(dim=1, descending=True, stable=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="run-to-run variation is a GPU property (atomics)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_two_runs_are_bitwise_identical_on_the_gpu(dtype):
    """The keypoint score is summed in a fixed order and the ranking breaks ties by index, so two
    forwards of one batch agree in every bit: scores, selections and heatmaps."""
    model = create_model("sharpose_base_256x192", backend="triton").eval().to("cuda", dtype)
    images = torch.randn(16, 3, 256, 192, device="cuda", dtype=dtype)
    with torch.no_grad():
        model.qp_threshold = math.inf
        model.qp_threshold = model(images).quality.median().item()  # some samples exit
        first, second = model(images), model(images)
    assert 0 < int(first.refined.sum()) < 16
    for name in ("patch_scores", "selected", "refined", "quality", "coarse_heatmaps", "heatmaps"):
        a, b = getattr(first, name), getattr(second, name)
        assert torch.equal(a, b), f"{name} differs between two runs"
