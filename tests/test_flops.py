"""FLOP counts (fvcore) against the released code's counts in DESIGN.md."""
import pytest

from sharpose import create_model
from sharpose.flops import count_gflops
from sharpose.published import ALPHA_SWEEP, RELEASED_SHARPOSE, RELEASED_VITPOSE


def decoder_gflops(model) -> float:
    """Multiply-adds of the token decoder on one sample's keypoint tokens (its linear layers)."""
    dims = [layer.weight.shape for layer in (model.decoder.fc1, getattr(model.decoder, "fc2", None)) if layer]
    return model.num_keypoints * sum(out * inp for out, inp in dims) / 1e9


@pytest.mark.parametrize("name", sorted(RELEASED_SHARPOSE))
def test_sharpose_gflops_match_released(name):
    _, both_stages, exit_after_coarse = RELEASED_SHARPOSE[name]
    model = create_model(name)
    assert count_gflops(model) == pytest.approx(both_stages, rel=5e-3)
    # the released code decodes exited samples' coarse tokens a second time; we reuse the coarse heatmaps
    assert count_gflops(model, refine=False) == pytest.approx(exit_after_coarse - decoder_gflops(model), rel=5e-3)


@pytest.mark.parametrize("name,decoder", sorted(RELEASED_VITPOSE))
def test_vitpose_gflops_match_released(name, decoder):
    expected = RELEASED_VITPOSE[(name, decoder)][1]
    if decoder == "simple":  # DESIGN.md counts a 1x1 final conv; the released head is 3x3
        expected += 64 * 48 * 768 * 17 * 8 / 1e9
    assert count_gflops(create_model(name, decoder=decoder)) == pytest.approx(expected, rel=5e-3)


@pytest.mark.parametrize("name,alpha", sorted(ALPHA_SWEEP))
def test_alpha_sweep_matches_released(name, alpha):
    assert count_gflops(create_model(name, alpha=alpha)) == pytest.approx(ALPHA_SWEEP[(name, alpha)][0], rel=5e-3)
