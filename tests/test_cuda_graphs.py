"""CUDA graphs with early exit (sharpose.models.graphs): the host-side bucket bookkeeping, the fine
stage's row independence that makes padding safe, and the bucketed path against the plain forward
(eagerly on the CPU; captured and replayed on a GPU)."""
import math

import pytest
import torch

from sharpose import create_model
from sharpose.benchmark.records import Unavailable
from sharpose.benchmark.runners import graphed_sharpose
from sharpose.models.graphs import GraphedSHaRPose, bucket_for, bucket_sizes, padded_rows, scatter_refined

# The bucketed path does the plain forward's arithmetic on a different number of rows, so only
# matrix-multiply blocking may differ: fp32 rounding of sums over at most a few hundred terms,
# the same bound the packed-vs-single-sample test of test_selection.py uses.
RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("batch_size, expected", [
    (1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8)), (256, (1, 2, 4, 8, 16, 32, 64, 128, 256)),
])
def test_bucket_sizes_are_powers_of_two_and_the_batch(batch_size, expected):
    assert bucket_sizes(batch_size) == expected


def test_bucket_for_picks_the_smallest_that_fits():
    buckets = bucket_sizes(6)
    assert [bucket_for(n, buckets) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    with pytest.raises(ValueError, match="exceed the largest bucket"):
        bucket_for(7, buckets)
    with pytest.raises(ValueError, match="at least 1"):
        bucket_sizes(0)


def test_padded_rows_are_the_refined_rows_then_copies_of_the_first():
    refined = torch.tensor([False, True, False, True, True, False])
    assert padded_rows(refined, 3, 4).tolist() == [1, 3, 4, 1]
    assert padded_rows(refined, 3, 3).tolist() == [1, 3, 4]
    assert padded_rows(torch.ones(6, dtype=torch.bool), 6, 6).tolist() == list(range(6))


def test_scatter_refined_drops_the_padding_rows():
    coarse = torch.zeros(5, 2, 3, 3)
    rows = torch.tensor([1, 3, 1, 1])
    fine = torch.stack([torch.full((2, 3, 3), v) for v in (10.0, 30.0, math.nan, math.inf)])
    out = scatter_refined(coarse, rows, fine, 2)
    assert out[1].eq(10).all() and out[3].eq(30).all()
    assert out[[0, 2, 4]].eq(0).all()
    assert coarse.eq(0).all()  # the coarse heatmaps themselves are left alone


def small_model(**overrides):
    torch.manual_seed(0)
    return create_model("sharpose_small_256x192", depth=2, embed_dim=96, num_heads=4, backend="reference",
                        **overrides).eval()


def threshold_exiting(model, images: torch.Tensor, num_exits: int) -> float:
    """The threshold at which exactly `num_exits` of the batch exit."""
    model.qp_threshold = math.inf
    with torch.no_grad():
        quality = model(images).quality.sort(descending=True).values
    return math.inf if num_exits == 0 else float(quality[num_exits - 1])


def test_padding_rows_never_change_the_real_rows():
    """Each row is its own sequence: whatever the padding rows hold, the real rows' fine-stage output
    is bit for bit the same, and equals the stage run without padding."""
    model = small_model()
    images = torch.randn(5, 3, 256, 192)
    with torch.no_grad():
        coarse = model.coarse_stage(images)
        k = model.token_budget.k_max
        real = torch.tensor([3, 1])
        padded = [model.fine_stage(coarse, torch.cat([real, torch.tensor(pad)]), 4 * k)[:2]
                  for pad in ([3, 3], [0, 4], [2, 2])]
        alone = model.fine_stage(coarse, real, 2 * k)
    assert all(torch.equal(padded[0], other) for other in padded[1:])
    torch.testing.assert_close(padded[0], alone, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("num_exits", [0, 1, 3, 5, 6])
def test_bucketed_path_equals_the_plain_forward(num_exits):
    """Batch 6 has buckets 1, 2, 4, 6: R = 6, 5 (padded to 6), 3 (padded to 4), 1, and every sample
    exiting (no fine stage)."""
    model = small_model()
    images = torch.randn(6, 3, 256, 192)
    model.qp_threshold = threshold_exiting(model, images, num_exits)
    graphed = GraphedSHaRPose(model, 6)
    assert not graphed.capture  # on the CPU the same steps run eagerly
    with torch.no_grad():
        expected = model(images)
    out = graphed(images)
    assert int(out.refined.logical_not().sum()) == num_exits
    for name in ("refined", "selected", "patch_scores", "quality", "coarse_heatmaps"):
        assert torch.equal(getattr(out, name), getattr(expected, name)), name
    torch.testing.assert_close(out.heatmaps, expected.heatmaps, rtol=RTOL, atol=ATOL)


class RecordedCall:
    """A stand-in for a CUDA graph on the CPU, with a graph's contract: capture allocates the outputs
    but computes nothing (they hold poison until replayed), and replay recomputes from whatever the
    static inputs hold now, writing into those same output tensors."""

    def __init__(self, call) -> None:
        self.call = call
        self.out = call()
        for t in self.tensors(self.out):
            t.fill_(math.nan if t.is_floating_point() else 2**40)  # an index this large fails loudly

    @staticmethod
    def tensors(out) -> list:
        return list(vars(out).values()) if hasattr(out, "__dataclass_fields__") else [out]

    def replay(self) -> None:
        for static, fresh in zip(self.tensors(self.out), self.tensors(self.call())):
            static.copy_(fresh)


@pytest.mark.parametrize("num_exits", [0, 2, 5])
def test_graph_wiring_with_recorded_calls(monkeypatch, num_exits):
    """The capture path's bookkeeping (static images, the coarse graph's outputs feeding each bucket's
    fine graph, static rows, copies out of graph memory) with graphs emulated on the CPU."""
    model = small_model()
    images = torch.randn(6, 3, 256, 192)
    model.qp_threshold = threshold_exiting(model, images, num_exits)

    def record(call, pool, warmup):
        graph = RecordedCall(call)
        return graph, graph.out

    monkeypatch.setattr(GraphedSHaRPose, "_record", staticmethod(record))
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    graphed = GraphedSHaRPose(model, 6, capture=False)
    graphed.capture = True
    with torch.inference_mode():
        graphed._capture(warmup=0)
    eager = GraphedSHaRPose(model, 6, capture=False)
    for batch in (images, torch.randn(6, 3, 256, 192)):  # a second batch: nothing stale is reused
        out, expected = graphed(batch), eager(batch)
        for name in ("refined", "selected", "patch_scores", "quality", "coarse_heatmaps", "heatmaps"):
            assert torch.equal(getattr(out, name), getattr(expected, name)), name
    graphed(torch.randn(6, 3, 256, 192))
    assert torch.equal(out.heatmaps, expected.heatmaps)  # outputs are not views of graph memory


def test_threshold_is_read_at_every_call():
    model = small_model()
    images = torch.randn(4, 3, 256, 192)
    graphed = GraphedSHaRPose(model, 4)
    model.qp_threshold = -math.inf
    assert not graphed(images).refined.any()
    model.qp_threshold = math.inf
    assert graphed(images).refined.all()


def test_what_cannot_be_graphed_is_named():
    with pytest.raises(ValueError, match="token_budget='fixed'"):
        GraphedSHaRPose(small_model(token_budget="adaptive"), 2)
    with pytest.raises(ValueError, match="model.eval"):
        GraphedSHaRPose(small_model().train(), 2)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedSHaRPose(small_model(), 2, capture=True)
    with pytest.raises(ValueError, match="captured for batches of 2, got 3"):
        GraphedSHaRPose(small_model(), 2)(torch.randn(3, 3, 256, 192))
    with pytest.raises(ValueError, match="NaN or inf"):
        GraphedSHaRPose(small_model(), 1)(torch.full((1, 3, 256, 192), math.nan))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_replayed_graphs_equal_the_eager_bucketed_path(backend):
    """Replay launches the kernels eager mode launches with the same shapes: the selections agree
    exactly, the floating-point outputs within the eager comparison's tolerance (a library may pick
    another algorithm while capturing)."""
    model = small_model().to("cuda")
    model.backend = backend
    images = torch.randn(8, 3, 256, 192, device="cuda")
    graphed = GraphedSHaRPose(model, 8)
    eager = GraphedSHaRPose(model, 8, capture=False)
    for num_exits in (0, 3, 5, 8):
        model.qp_threshold = threshold_exiting(model, images, num_exits)
        out, expected = graphed(images), eager(images)
        assert torch.equal(out.refined, expected.refined) and torch.equal(out.selected, expected.selected)
        for name in ("patch_scores", "quality", "coarse_heatmaps", "heatmaps"):
            torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=RTOL, atol=ATOL)


def test_benchmark_reports_an_ungraphable_case_as_unavailable():
    """`bench/throughput.py --cuda-graphs` times early exit through GraphedSHaRPose; a model it cannot
    graph becomes an "unavailable" row naming the reason."""
    with pytest.raises(Unavailable, match="token_budget='fixed'"):
        graphed_sharpose(small_model(token_budget="adaptive"), torch.randn(2, 3, 256, 192))
