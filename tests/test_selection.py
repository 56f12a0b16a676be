"""Token budgets, selection packing, and the sparse fine stage's control flow."""
import math

import pytest
import torch

from helpers import assert_close, max_abs, summation_bound
from host_traffic import HostTraffic
from sharpose import create_model
from sharpose.models.selection import TokenBudget, fine_children, pack_selected


def test_pack_selected_matches_a_loop():
    order = torch.stack([torch.randperm(12) for _ in range(5)])
    counts = torch.tensor([3, 0, 12, 1, 5])
    sample, patch = pack_selected(order, counts, int(counts.sum()))
    expected_sample = torch.cat([torch.full((int(c),), i) for i, c in enumerate(counts)])
    expected_patch = torch.cat([order[i, : int(c)] for i, c in enumerate(counts)])
    assert torch.equal(sample, expected_sample) and torch.equal(patch, expected_patch)


def test_fine_children_cover_each_coarse_patch():
    fy, fx = fine_children(torch.arange(12), (4, 3))
    covered = sorted((fy * 6 + fx).flatten().tolist())
    assert covered == list(range(48))
    assert (fy // 2 * 3 + fx // 2 == torch.arange(12)[:, None]).all()


def test_adaptive_counts_are_the_smallest_sets_reaching_tau():
    scores = torch.rand(20, 48) ** 4
    order = scores.argsort(dim=1, descending=True)
    budget = TokenBudget("adaptive", k_max=30, k_min=2, tau=0.6)
    counts = budget.counts(scores, order)
    for row, count in zip(scores, counts.tolist()):
        ranked = row.sort(descending=True).values
        smallest = next(m for m in range(1, 49) if ranked[:m].sum() >= 0.6 * row.sum())
        assert count == min(max(smallest, 2), 30)
    assert torch.equal(TokenBudget("fixed", k_max=7).counts(scores, order), torch.full((20,), 7))


@pytest.mark.parametrize("kwargs,message", [
    (dict(mode="some", k_max=3), "token_budget must be one of"),
    (dict(mode="adaptive", k_max=3, k_min=4), "k_min <= k_max"),
    (dict(mode="adaptive", k_max=3, tau=0.0), "tau"),
])
def test_budget_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenBudget(**kwargs)


def small_model(**overrides):
    return create_model("sharpose_small_256x192", depth=2, embed_dim=96, num_heads=4, backend="reference",
                        **overrides).eval()


def test_adaptive_budget_runs_each_sample_as_its_own_sequence():
    """Packed variable-length sequences do not leak into each other: every sample's heatmaps equal a
    batch-1 run of a fixed-budget model whose k is that sample's count."""
    model = small_model(token_budget="adaptive", tau=0.5, k_min=3, k_max=30)
    model.qp_threshold = math.inf
    for block in model.blocks:  # peaky attention, so that samples need different numbers of patches
        block.attn.qkv.weight.data.mul_(20)
    images = torch.randn(4, 3, 256, 192)
    with torch.no_grad():
        out = model(images)
        counts = (out.selected >= 0).sum(1)
        assert out.selected.shape == (4, 30) and ((counts >= 3) & (counts <= 30)).all()
        assert len(set(counts.tolist())) > 1, "the batch has different lengths"
        fixed = small_model(k_max=None)
        fixed.load_state_dict(model.state_dict())
        fixed.qp_threshold = math.inf
        for i, count in enumerate(counts.tolist()):
            fixed.token_budget.k_max = count
            single = fixed(images[i : i + 1])
            assert torch.equal(single.selected[0], out.selected[i, :count])
            # the batch and the batch-1 run sum in different orders (threads, GEMM blocking): each is
            # within the worst-case error of the longest reduction (the MLP's 4 D-term dot products)
            # relative to the heatmaps' magnitude, so they differ by at most twice that; one leaked
            # token changes the heatmaps by a sizeable fraction of their magnitude
            bound = 2 * summation_bound(torch.float32, 4 * 96, max_abs(out.heatmaps[i]), worst_case=True)
            assert_close(single.heatmaps[0], out.heatmaps[i], bound, f"sample {i}'s heatmaps")


def median_threshold(model, images: torch.Tensor) -> float:
    """A threshold at which some but not all of the batch exits."""
    model.qp_threshold = math.inf
    with torch.no_grad():
        return model(images).quality.median().item()


@pytest.mark.parametrize("token_budget", ["fixed", "adaptive"])
@pytest.mark.parametrize("exit_some", [False, True])
def test_one_host_sync_per_forward(token_budget, exit_some):
    model = small_model(token_budget=token_budget)
    images = torch.randn(4, 3, 256, 192)
    model.qp_threshold = median_threshold(model, images) if exit_some else math.inf
    with torch.no_grad(), HostTraffic() as traffic:
        out = model(images)
    assert traffic.uploads == traffic.syncs == [] and len(traffic.reads) == 1
    assert 0 < int(out.refined.sum()) < 4 if exit_some else out.refined.all()


@pytest.mark.parametrize("token_budget, exit_some, training, capturable", [
    ("fixed", False, False, True),
    ("fixed", True, False, False),
    ("fixed", True, True, True),  # training refines every sample whatever the threshold
    ("adaptive", False, False, False),
])
def test_capturable_forward_never_syncs(monkeypatch, token_budget, exit_some, training, capturable):
    """`model.capturable` promises a forward a CUDA graph can record: with the input check off (as while
    capturing or tracing) it reads nothing back from the device; otherwise it must read its sizes."""
    model = small_model(token_budget=token_budget)
    images = torch.randn(4, 3, 256, 192)
    model.qp_threshold = median_threshold(model, images) if exit_some else math.inf
    model.train(training)
    monkeypatch.setattr("sharpose.models.sharpose.is_tracing", lambda: True)
    with torch.no_grad(), HostTraffic() as traffic:
        model(images)
    assert model.capturable == capturable
    assert traffic.uploads == traffic.syncs == []
    assert len(traffic.reads) == (0 if capturable else 1)


@pytest.mark.parametrize("qp_threshold", [-math.inf, math.inf])
def test_every_sample_exiting_or_none(qp_threshold):
    model = small_model(token_budget="adaptive")
    model.qp_threshold = qp_threshold
    with torch.no_grad():
        out = model(torch.randn(3, 3, 256, 192))
    assert out.refined.all() if qp_threshold > 0 else not out.refined.any()
    if qp_threshold < 0:
        assert torch.equal(out.heatmaps, out.coarse_heatmaps) and (out.selected == -1).all()


@pytest.mark.parametrize("tau, expected", [(0.25, 1), (0.5, 2), (0.75, 3), (0.875, 4), (1.0, 5), (0.5000001, 3)])
def test_adaptive_count_when_the_mass_lands_exactly_on_tau(tau, expected):
    """Dyadic scores make every cumulative mass exact: a set whose mass equals tau reaches it, so
    the count is the first m with mass >= tau (a '<=' in place of '<' would take one more)."""
    scores = torch.tensor([[0.125, 0.25, 0.125, 0.25, 0.25]])  # sum 1, ranked 0.25, 0.25, 0.25, 0.125, 0.125
    order = scores.argsort(dim=1, descending=True, stable=True)
    budget = TokenBudget("adaptive", k_max=5, k_min=1, tau=tau)
    assert budget.counts(scores, order).tolist() == [expected]
    # scaled by a power of two (still exact), the counts do not change
    assert budget.counts(scores * 8, order).tolist() == [expected]


def test_fine_children_child_order():
    """Child c of a coarse patch is its fine cell (2 row + dy, 2 col + dx) with c = 2 dy + dx, written
    out for two patches of a 4x3 coarse grid (fine 8x6)."""
    fy, fx = fine_children(torch.tensor([0, 5]), (4, 3))
    # patch 5 is coarse row 1, column 2: fine top-left (2, 4)
    assert fy.tolist() == [[0, 0, 1, 1], [2, 2, 3, 3]]
    assert fx.tolist() == [[0, 1, 0, 1], [4, 5, 4, 5]]
