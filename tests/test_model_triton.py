"""The model on the Triton backend: released-code parity, no N x N attention maps, gradients.

On a machine without CUDA the kernels run under the Triton interpreter (tests/conftest.py); with
one, the Triton model runs on the GPU and is compared with the CPU reference results.
"""
import dataclasses
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sharpose import create_model

from helpers import (
    OFFICIAL_PARITY_REL,
    assert_as_accurate_as_torch,
    assert_rel_close,
    network_rel_tolerance,
    official_tiny_model,
)


def test_official_tiny_parity_triton_backend(device):
    model, expected = official_tiny_model(backend="triton")
    with torch.no_grad():
        out = model.to(device)(expected["input"].to(device))
    out = dataclasses.replace(out, **{f.name: getattr(out, f.name).cpu() for f in dataclasses.fields(out)})
    assert torch.equal(out.refined, expected["refined_mask"])
    for row in out.refined.nonzero().flatten().tolist():
        assert set(out.selected[row].tolist()) == set(expected["selected_coarse_index"][row].tolist())
    assert_rel_close(out.patch_scores, expected["keypoint_attention_score"], OFFICIAL_PARITY_REL, "patch_scores")
    assert_rel_close(out.quality, expected["quality"], OFFICIAL_PARITY_REL, "quality")
    assert_rel_close(out.coarse_heatmaps, expected["coarse_heatmaps"], OFFICIAL_PARITY_REL, "coarse_heatmaps")
    assert_rel_close(out.heatmaps, expected["final_heatmaps"], OFFICIAL_PARITY_REL, "heatmaps")


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


def test_triton_path_never_allocates_attention_maps(device):
    model = create_model("sharpose_small_256x192", depth=2, embed_dim=64, num_heads=4, backend="triton")
    model = model.eval().to(device)
    model.qp_threshold = math.inf
    coarse_len = 1 + 17 + model.num_coarse
    fine_len = 17 + model.num_coarse + 3 * model.num_selected
    with torch.no_grad(), ShapeRecorder() as recorder:
        model(torch.randn(2, 3, 256, 192, device=device))
    square = [(op, s) for op, s in recorder.shapes if len(s) >= 2 and s[-1] == s[-2] and s[-1] in (coarse_len, fine_len)]
    assert recorder.shapes and not square, f"attention-map-sized tensors: {square[:5]}"
    # the recorder does see an explicit attention map, so the check can fail
    q = torch.randn(2, 4, coarse_len, 16)
    with ShapeRecorder() as recorder:
        (q @ q.transpose(-2, -1)).softmax(-1)
    assert any(s[-2:] == (coarse_len, coarse_len) for _, s in recorder.shapes)


def test_triton_gradients_match_reference(device):
    torch.manual_seed(3)
    reference = create_model("sharpose_small_256x192", depth=2, embed_dim=64, num_heads=2, drop_path_rate=0.0,
                             backend="reference")
    triton = create_model("sharpose_small_256x192", depth=2, embed_dim=64, num_heads=2, drop_path_rate=0.0,
                          backend="triton")
    triton.load_state_dict(reference.state_dict())
    triton.to(device)
    images = torch.randn(2, 3, 256, 192)
    grads, scores = {}, {}
    for name, model in (("reference", reference), ("triton", triton)):
        out = model.train()(images.to(device) if name == "triton" else images)
        loss = out.heatmaps.square().mean() + out.coarse_heatmaps.square().mean() + out.quality.square().mean()
        loss.backward()
        grads[name] = {n: p.grad.cpu() for n, p in model.named_parameters()}
        scores[name] = out.patch_scores.detach().cpu()
    # two float32 evaluations in different orders; the longest reduction is the patch embedding's
    # (3 * 16 * 16 terms) forward and its weight gradient's (over the batch's 2 * 192 fine patches)
    rel = network_rel_tolerance(3 * 16 * 16)
    assert_rel_close(scores["triton"], scores["reference"], rel, "patch scores")
    for name, grad in grads["reference"].items():
        assert_rel_close(grads["triton"][name], grad, rel, f"d({name})")


@pytest.mark.parametrize("token_budget", ["fixed", "adaptive"])
def test_half_precision_model_matches_reference(device, token_budget):
    """The whole model in fp16 (bf16 needs CUDA) on the Triton backend, some samples exiting: the same
    samples refine on the same patches as the reference backend in fp16 and fp32, and against the
    fp32 model its heatmaps, quality and patch scores err at most twice as much as the reference
    backend's in fp16 (FlashAttention's criterion at the model level)."""
    torch.manual_seed(5)
    kwargs = dict(depth=2, embed_dim=64, num_heads=2, token_budget=token_budget)
    reference = create_model("sharpose_small_256x192", backend="reference", **kwargs).eval()
    triton = create_model("sharpose_small_256x192", backend="triton", **kwargs).eval()
    triton.load_state_dict(reference.state_dict())
    images = torch.randn(4, 3, 256, 192, device=device)
    reference.to(device)
    with torch.no_grad():
        quality = reference(images).quality.sort().values
        threshold = (quality[1] + quality[2]).item() / 2  # two samples exit, far from a tie
        reference.qp_threshold = triton.qp_threshold = threshold
        exact = reference(images)
        theirs = reference.half()(images.half())
        out = triton.half().to(device)(images.half())
    assert out.heatmaps.dtype == torch.float16 and int(out.refined.sum()) == 2
    for other in (theirs, exact):
        assert torch.equal(out.refined, other.refined) and torch.equal(out.selected, other.selected)
    for field in ("heatmaps", "coarse_heatmaps", "quality", "patch_scores"):
        assert_as_accurate_as_torch(getattr(out, field), getattr(exact, field), getattr(theirs, field), field)
