"""SHaRPose and ViTPose models: parity with the released code, outputs, gradients, bad input."""
import json
import math

import pytest
import torch

import sharpose
from sharpose import SHaRPose, create_model, load_checkpoint
from sharpose.flops.published import RELEASED_SHARPOSE, RELEASED_VITPOSE
from sharpose.models.layers import Attention

from helpers import DATA_DIR, OFFICIAL_PARITY_REL, assert_rel_close, network_rel_tolerance, official_tiny_model

LAYOUT = json.loads((DATA_DIR / "reference" / "official_layout.json").read_text())


def test_official_tiny_parity_reference_backend():
    model, expected = official_tiny_model(backend="reference")
    with torch.no_grad():
        out = model(expected["input"])
    assert torch.equal(out.refined, expected["refined_mask"])
    assert 0 < int(out.refined.sum()) < len(out.refined), "the fixture mixes exiting and refined samples"
    for row in out.refined.nonzero().flatten().tolist():
        assert set(out.selected[row].tolist()) == set(expected["selected_coarse_index"][row].tolist())
    assert (out.selected[~out.refined] == -1).all()
    assert_rel_close(out.patch_scores, expected["keypoint_attention_score"], OFFICIAL_PARITY_REL)
    assert_rel_close(out.quality, expected["quality"], OFFICIAL_PARITY_REL)
    assert_rel_close(out.coarse_heatmaps, expected["coarse_heatmaps"], OFFICIAL_PARITY_REL)
    assert_rel_close(out.heatmaps, expected["final_heatmaps"], OFFICIAL_PARITY_REL)


class AttentionRecorder:
    """Forward hooks that recompute every block's (B, H, N, N) attention explicitly."""

    def __init__(self, model: SHaRPose) -> None:
        self.maps: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, Attention)]

    def _hook(self, module: Attention, args, _output) -> None:
        x = args[0]
        B, N, C = x.shape
        q, k, _ = module.qkv(x).reshape(B, N, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4)
        self.maps.append(((q @ k.transpose(-2, -1)) * module.head_dim**-0.5).softmax(-1))


@pytest.mark.parametrize("score_keypoints", ["released", "all"])
def test_patch_scores_are_the_ema_of_keypoint_attention(score_keypoints):
    """Eq. 6-7 computed the released way (EMA state updated layer by layer on full maps)."""
    model = create_model("sharpose_small_256x192", depth=4, score_keypoints=score_keypoints, backend="reference")
    model.qp_threshold = -math.inf  # every sample exits: only the coarse stage runs
    recorder = AttentionRecorder(model)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 256, 192))
    assert len(recorder.maps) == 4
    ema = 0.0
    for layer in range(1, 4):  # depth // 4 .. depth - 1
        ema = 0.99 * ema + 0.01 * recorder.maps[layer]
    last_row = 17 if score_keypoints == "released" else 18
    expected = ema.mean(dim=1)[:, 1:last_row, 18:].sum(dim=1)
    # the same probabilities summed in other orders: 32 (head dim) terms per logit, 16 rows x 12 heads per score
    assert_rel_close(out.patch_scores, expected, network_rel_tolerance(16 * 12), "patch scores")


def test_score_keypoints_changes_the_score():
    torch.manual_seed(1)
    model = create_model("sharpose_small_256x192", depth=2, backend="reference").eval()
    images = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        released = model(images).patch_scores
        model.score_keypoints = "all"
        assert not torch.allclose(model(images).patch_scores, released)


@pytest.mark.parametrize("name", sorted(RELEASED_SHARPOSE))
def test_sharpose_parameter_counts_equal_released(name):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == RELEASED_SHARPOSE[name][0] == LAYOUT[name]["params"]


@pytest.mark.parametrize("name,decoder", sorted(RELEASED_VITPOSE))
def test_vitpose_parameter_counts(name, decoder):
    params = sum(p.numel() for p in create_model(name, decoder=decoder).parameters())
    expected_m = RELEASED_VITPOSE[(name, decoder)][0]
    if decoder == "simple":  # docs/design.md's figure counts a 1x1 final conv; the released head is 3x3
        params -= 768 * 17 * 8
    assert round(params / 1e6, 2) == expected_m


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_released_layout_loads_strictly(name, tmp_path):
    """Every key of a released checkpoint maps onto ours with the same shape, and back to the same tensor."""
    model = create_model(name)
    state = {k: torch.randn(shape) for k, shape in LAYOUT[name]["state_dict"].items()}
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "released.pth")
    load_checkpoint(model, tmp_path / "released.pth")
    assert torch.equal(model.fine_pos_embed, state["backbone.pos_embed_list.1"])
    assert torch.equal(model.quality_head.fc3.weight, state["backbone.quality_predictor.mlp.6.weight"])
    assert torch.equal(model.decoder.fc1.bias, state["keypoint_head.heatmap_mlp.1.bias"])
    assert len(model.state_dict()) == len(state)


def test_wrong_architecture_checkpoint_is_rejected_with_the_keys(tmp_path):
    small = {k: torch.zeros(shape) for k, shape in LAYOUT["sharpose_small_256x192"]["state_dict"].items()}
    torch.save({"state_dict": small}, tmp_path / "small.pth")
    with pytest.raises(sharpose.CheckpointError, match=r"169 mis-shaped key\(s\): .*patch_embed.proj.weight: checkpoint \(384, 3, 16, 16\) vs model \(768"):
        load_checkpoint(create_model("sharpose_base_256x192"), tmp_path / "small.pth")
    with pytest.raises(sharpose.CheckpointError, match=r"missing key\(s\)"):
        load_checkpoint(create_model("vitpose_small_256x192"), tmp_path / "small.pth")


def test_unreadable_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_checkpoint(create_model("vitpose_small_256x192"), tmp_path / "nothing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(sharpose.CheckpointError, match="garbage.pth"):
        load_checkpoint(create_model("vitpose_small_256x192"), tmp_path / "garbage.pth")


def test_vitpose_mmpose_checkpoint_loads(tmp_path):
    source = create_model("vitpose_small_256x192").eval()
    torch.nn.init.normal_(source.decoder.deconv_layers[1].running_mean)
    renamed = {}
    for key, value in source.state_dict().items():
        key = key.replace("norm.", "last_norm.") if key.startswith("norm.") else key
        renamed["keypoint_head." + key[len("decoder."):] if key.startswith("decoder.") else "backbone." + key] = value
    assert "backbone.last_norm.weight" in renamed and "keypoint_head.deconv_layers.1.running_var" in renamed
    torch.save({"state_dict": renamed}, tmp_path / "vitpose.pth")
    target = create_model("vitpose_small_256x192").eval()
    load_checkpoint(target, tmp_path / "vitpose.pth")
    images = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        assert torch.equal(target(images).heatmaps, source(images).heatmaps)


def test_own_format_round_trip(tmp_path):
    source = create_model("sharpose_small_256x192", depth=2, backend="reference").eval()
    sharpose.save_checkpoint(source, tmp_path / "ours.pth", epoch=3)
    target = create_model("sharpose_small_256x192", depth=2, backend="reference").eval()
    assert load_checkpoint(target, tmp_path / "ours.pth")["epoch"] == 3
    images = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        assert torch.equal(target(images).heatmaps, source(images).heatmaps)
    with pytest.raises(sharpose.CheckpointError, match=r"fit the model sharpose_small_256x192\(depth=3\)\n.*saved from sharpose_small_256x192\(depth=2"):
        load_checkpoint(create_model("sharpose_small_256x192", depth=3), tmp_path / "ours.pth")


@pytest.mark.parametrize("threshold,expect_refined", [(math.inf, [1, 1, 1]), (-math.inf, [0, 0, 0]), (None, None)])
def test_early_exit_outputs(threshold, expect_refined):
    model = create_model("sharpose_small_256x192", depth=2, backend="reference").eval()
    images = torch.randn(3, 3, 256, 192)
    with torch.no_grad():
        quality = model(images).quality
        model.qp_threshold = threshold if threshold is not None else quality.median().item()
        out = model(images)
    expect = torch.tensor(expect_refined, dtype=torch.bool) if expect_refined else quality < model.qp_threshold
    assert torch.equal(out.refined, expect)
    assert out.heatmaps.shape == out.coarse_heatmaps.shape == (3, 17, 64, 48)
    assert out.patch_scores.shape == (3, 48) and out.patch_scores.dtype == torch.float32
    assert out.selected.shape == (3, math.ceil(0.5 * 48)) and out.selected.dtype == torch.long
    assert torch.equal(out.heatmaps[~expect], out.coarse_heatmaps[~expect])
    assert not torch.isclose(out.heatmaps[expect], out.coarse_heatmaps[expect]).all(dim=(1, 2, 3)).any()
    assert (out.selected[~expect] == -1).all()
    for row in expect.nonzero().flatten().tolist():  # the top-k patches by score, best first
        assert torch.equal(out.selected[row], out.patch_scores[row].topk(out.selected.shape[1]).indices)


def test_train_mode_refines_everything_and_every_parameter_gets_a_gradient():
    model = create_model("sharpose_small_256x192", depth=2, backend="reference").train()
    model.qp_threshold = -math.inf  # would exit every sample in eval mode
    out = model(torch.randn(2, 3, 256, 192))
    assert out.refined.all()
    (out.heatmaps.square().mean() + out.coarse_heatmaps.square().mean() + out.quality.square().mean()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused, f"parameters without gradient: {unused}"


def test_vitpose_forward_and_gradients():
    for decoder in ("classic", "simple"):
        model = create_model("vitpose_small_256x192", depth=2, decoder=decoder)
        heatmaps = model(torch.randn(2, 3, 256, 192)).heatmaps
        assert heatmaps.shape == (2, 17, 64, 48)
        heatmaps.square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ["sharpose_small_256x192", "vitpose_small_256x192"])
@pytest.mark.parametrize(
    "images,message",
    [
        (torch.randn(1, 3, 128, 96), "built for 256x192"),
        (torch.randn(1, 1, 256, 192), "expects 3 image channels, got 1"),
        (torch.randn(3, 256, 192), r"shape \(B, 3, H, W\)"),
        (torch.zeros(1, 3, 256, 192, dtype=torch.uint8), "floating-point images"),
        (torch.full((1, 3, 256, 192), float("nan")), "NaN or inf"),
        (torch.randn(1, 3, 256, 192).index_fill_(2, torch.tensor([7]), float("inf")), "NaN or inf"),
    ],
)
def test_bad_input_is_named(name, images, message):
    model = create_model(name, depth=1).eval()
    with pytest.raises(ValueError, match=message):
        model(images)


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown model 'sharpose_huge'.*sharpose_base_256x192"):
        create_model("sharpose_huge")
    with pytest.raises(ValueError, match="does not take decoder"):
        create_model("sharpose_base_256x192", decoder="simple")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        create_model("sharpose_base_256x192", backend="cuda")
    with pytest.raises(ValueError, match="score_keypoints"):
        create_model("sharpose_base_256x192", score_keypoints="some")


def test_overrides_reach_the_model():
    model = create_model("sharpose_small_256x192", input_size=(384, 288), embed_dim=96, depth=3, num_heads=4,
                         alpha=0.25, heatmap_size=(48, 36), qp_threshold=0.5, backend="reference")
    assert (model.num_coarse, model.num_selected, model.heatmap_size) == (108, 27, (48, 36))
    assert len(model.blocks) == 3 and model.blocks[0].attn.num_heads == 4
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 384, 288))
    assert out.heatmaps.shape == (1, 17, 48, 36)
