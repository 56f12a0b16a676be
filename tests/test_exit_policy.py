"""The models' common interface: one output type, the exit policy (threshold and backend, restored on
leaving, also after an error), the tuple form used by export and FLOP counting."""
import math

import pytest
import torch

from sharpose import PoseOutput, create_model
from sharpose.models import TupleOutputs

TINY = dict(depth=2, embed_dim=64, num_heads=4, input_size=(96, 64))


def test_both_models_return_one_output_type():
    images = torch.randn(2, 3, 96, 64)
    sharpose_out = create_model("sharpose_small_256x192", **TINY, backend="reference").eval()(images)
    vitpose_out = create_model("vitpose_small_256x192", **TINY).eval()(images)
    assert type(sharpose_out) is type(vitpose_out) is PoseOutput
    assert vitpose_out.heatmaps.shape == sharpose_out.heatmaps.shape == (2, 17, 24, 16)
    assert vitpose_out.quality is None and vitpose_out.coarse_heatmaps is None and vitpose_out.selected is None
    assert sharpose_out.stage_heatmaps().shape == (2, 2, 17, 24, 16)
    assert vitpose_out.stage_heatmaps().shape == (2, 1, 17, 24, 16)


def test_exit_policy_applies_and_restores():
    model = create_model("sharpose_small_256x192", **TINY, qp_threshold=0.5, backend="reference").eval()
    images = torch.randn(3, 3, 96, 64)
    with model.exit_policy(qp_threshold=-math.inf, backend="auto"):
        assert model.qp_threshold == -math.inf and model.backend == "auto"
        assert all(block.attn.backend == "auto" for block in model.blocks)
        assert not model(images).refined.any()  # every sample exits
    assert model.qp_threshold == 0.5 and model.backend == "reference"
    assert all(block.attn.backend == "reference" for block in model.blocks)
    with model.exit_policy():  # None: keep both
        assert model.qp_threshold == 0.5 and model.backend == "reference"


def test_exit_policy_restores_after_an_exception():
    model = create_model("sharpose_small_256x192", **TINY, qp_threshold=0.5, backend="reference").eval()
    with pytest.raises(ValueError, match="built for 96x64"):
        with model.exit_policy(qp_threshold=math.inf, backend="auto"):
            model(torch.randn(1, 3, 32, 32))
    assert model.qp_threshold == 0.5 and model.backend == "reference"
    assert all(block.attn.backend == "reference" for block in model.blocks)
    with pytest.raises(ValueError, match="unknown backend"):  # a bad policy changes nothing
        with model.exit_policy(qp_threshold=-1.0, backend="cuda"):
            pass
    assert model.qp_threshold == 0.5 and model.backend == "reference"


def test_model_without_early_exit_runs_its_one_stage_under_any_threshold():
    model = create_model("vitpose_small_256x192", **TINY).eval()
    images = torch.randn(2, 3, 96, 64)
    expected = model(images).heatmaps
    with model.exit_policy(qp_threshold=-math.inf, backend="reference"):
        assert model.qp_threshold == math.inf
        torch.testing.assert_close(model(images).heatmaps, expected, rtol=0, atol=0)


def test_tuple_outputs_follow_output_names_under_the_policy():
    model = create_model("sharpose_small_256x192", **TINY, qp_threshold=0.5, backend="reference").eval()
    images = torch.randn(2, 3, 96, 64)
    wrapped = TupleOutputs(model, qp_threshold=-math.inf, backend="reference")
    outputs = wrapped(images)
    assert wrapped.output_names == ("heatmaps", "coarse_heatmaps", "quality", "patch_scores", "selected")
    assert len(outputs) == 5
    # every sample exited: the final heatmaps are the coarse ones and nothing is selected
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert (outputs[4] == -1).all()
    assert model.qp_threshold == 0.5
    vit = TupleOutputs(create_model("vitpose_small_256x192", **TINY).eval())
    assert vit.output_names == ("heatmaps",) and len(vit(images)) == 1
