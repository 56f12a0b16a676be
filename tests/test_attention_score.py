"""The keypoint-attention score of the Triton attention: finite for every finite input, equal to the
reference, and reproducible bit for bit.

Adversarial inputs: rows whose logits are all far below zero (their own maximum about -1e3 after
scaling) or far above it, inside and outside the score rows, in fp32 and fp16, batched, through
both forward paths (all keys in one tile; several key tiles with the score's second pass), and
through the model.
"""
from __future__ import annotations

import math

import pytest
import torch

from helpers import exact_head_terms
from kernels import reference
from kernels.reference import score_slots
from kernels.fused_attention import AttentionConfig, KernelLaunch, attention_forward, attention_with_score

# Lanes outside the score rows may overflow exp2 to inf under the interpreter before tl.where drops them.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")

CUDA = torch.cuda.is_available()
EPS32 = torch.finfo(torch.float32).eps

# The two forward paths at N = 66, forced through explicit tiles (the backward tiles are unused).
_BWD = KernelLaunch(64, 64)
PATHS = {
    "default": None,  # what the launcher picks (one tile for fp16; the interpreter's fp32 picks key tiles)
    "one key tile": AttentionConfig(KernelLaunch(16, 128), _BWD, _BWD, 64),
    "key tiles": AttentionConfig(KernelLaunch(32, 32), _BWD, _BWD, 64),
}


def assert_score_matches(ours, q, k, scale, rows, cols, weight):
    """ours vs float64, within twice PyTorch's own float32 error on the same inputs (the kernel
    computes logits and probabilities in fp32 from the dtype's inputs, so PyTorch's fp32 path is
    the same-precision baseline), plus a floor for fp32 rounding: a logit of magnitude |s| carries
    an absolute error of a few |s| * eps, which the probability carries as a relative error, and
    the sum over rows and heads adds a few eps more."""
    assert torch.isfinite(ours).all(), f"non-finite score: {ours}"
    truth = exact_head_terms(q, k, rows, cols, scale, weight).sum(dim=1)  # float64 on the upcast inputs
    _, term32 = reference.attention_with_score(q.float(), k.float(), k.float(), rows, cols, scale=scale,
                                               score_weight=weight)
    torch32 = term32.sum(dim=(1, 2))
    err_torch = (torch32.double() - truth).abs().max().item()
    max_logit = ((q.double() @ k.double().transpose(-2, -1)) * scale).abs().max().item()
    floor = 8 * EPS32 * (1 + max_logit) * max(truth.abs().max().item(), EPS32)
    err = (ours.double() - truth).abs().max().item()
    assert err <= 2 * err_torch + floor, f"score error {err:.3g} > 2 x {err_torch:.3g} + {floor:.3g}"


def run_score(q, k, v, rows, cols, weight=0.37, config=None):
    """One forward's score term summed over heads and slots, the term poisoned with NaN beforehand
    (the kernel must store every element, the slots no query block owns included)."""
    B, H = q.shape[:2]
    term = torch.full((B, H, score_slots(rows[1] - rows[0]), cols[1] - cols[0]), math.nan, device=q.device)
    attention_forward(q, k, v, q.shape[-1] ** -0.5, rows, cols, weight, term=term, config=config)
    return term.sum(dim=(1, 2))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_row_with_very_negative_maximum_outside_score_rows(device, dtype, path):
    """B = H = 1, N = 66, d = 64, keys shifted by +4, query row 0 (not a score row) set to -6: its
    logits are all about -190, so exp2(s - m) of another row's maximum overflows there."""
    q, k, v = torch.randn(3, 1, 1, 66, 64, device=device).unbind(0)
    k += 4
    q[..., 0, :] = -6
    q, k, v = (t.to(dtype) for t in (q, k, v))
    rows, cols = (1, 17), (18, 66)
    score = run_score(q, k, v, rows, cols, config=PATHS[path])
    assert_score_matches(score.cpu(), q.cpu(), k.cpu(), 64 ** -0.5, rows, cols, 0.37)


def extreme_qkv(B, H, N, d, dtype, device, magnitude=30.0):
    """q, k, v whose scaled logits reach about +-1e3 (magnitude 30, d 64: 30 * 4 * 64 / 8 = 960):
    keys shifted by +4, so a query row c * (1, ..., 1) has all logits near 32 c; per sample a mix of
    rows with very large, very small and mixed-sign maxima, inside and outside the score rows."""
    q, k, v = torch.randn(3, B, H, N, d, device=device).unbind(0)
    k += 4
    ones = torch.ones(d, device=device)
    patterns = [magnitude * ones, -magnitude * ones, magnitude * torch.randn(d, device=device), -0.1 * ones]
    for b in range(B):
        for row in range(N):
            pattern = (row + b) % (len(patterns) + 1)
            if pattern < len(patterns):
                q[b, :, row] = patterns[pattern]
    return (t.to(dtype) for t in (q, k, v))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits_batched(device, dtype, path):
    B, H, N, d = 3, 2, 66, 64
    q, k, v = extreme_qkv(B, H, N, d, dtype, device)
    for rows, cols in (((1, 17), (18, N)), ((0, N), (0, N)), ((40, 66), (0, 30))):
        score = run_score(q, k, v, rows, cols, config=PATHS[path])
        assert_score_matches(score.cpu(), q.cpu(), k.cpu(), d ** -0.5, rows, cols, 0.37)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits_long_sequence(device, dtype):
    """Beyond one key tile (N = 150): the launcher's own multi-tile configuration."""
    B, H, N, d = 2, 1, 150, 64
    q, k, v = extreme_qkv(B, H, N, d, dtype, device)
    rows, cols = (1, 17), (18, N)
    score = run_score(q, k, v, rows, cols)
    assert_score_matches(score.cpu(), q.cpu(), k.cpu(), d ** -0.5, rows, cols, 0.37)


def test_output_still_matches_with_extreme_logits(device):
    """The output path is unchanged by the score fix: fp32, against the reference."""
    q, k, v = extreme_qkv(2, 2, 66, 64, torch.float32, device)
    out, _ = attention_with_score(q, k, v, (1, 17), (18, 66))
    expected = reference.attention(q.cpu(), k.cpu(), v.cpu())
    assert torch.isfinite(out).all()
    # fp32 at logits ~1e3: errors of a few |s| * eps in the logits move probabilities relatively by as much
    assert (out.cpu() - expected).abs().max().item() <= 16 * EPS32 * 1e3 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("path", PATHS)
def test_score_is_reproducible(device, path):
    """Two runs, bitwise equal scores (cheap on the CPU, where nothing races; see the GPU test)."""
    q, k, v = extreme_qkv(2, 3, 66, 64, torch.float16, device, magnitude=1.0)
    first = run_score(q, k, v, (1, 17), (18, 66), config=PATHS[path])
    second = run_score(q, k, v, (1, 17), (18, 66), config=PATHS[path])
    assert torch.equal(first, second)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="bitwise reproducibility across runs is a property of the GPU's parallel "
                                     "execution; nothing races under the CPU interpreter")
def test_score_is_bitwise_reproducible_on_gpu():
    """Many programs writing one sample's score: on a GPU their order changes from run to run, and
    the score term must not (each element stored by one program, no atomics)."""
    torch.manual_seed(1)
    B, H, d = 64, 12, 64
    for N in (66, 126, 300):
        x = torch.randn(B, N, 3 * H * d, device="cuda", dtype=torch.float16)
        q, k, v = x.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        scores = [attention_with_score(q, k, v, (1, 17), (18, N), score_weight=0.1)[1] for _ in range(5)]
        assert all(torch.equal(scores[0], s) for s in scores[1:]), f"N={N}: scores differ between runs"


def test_model_patch_scores_finite_and_equal_to_reference(device):
    """A small SHaRPose whose coarse tokens have extreme scales: patch_scores on the Triton backend
    are finite and equal to the reference backend's."""
    from sharpose import create_model

    torch.manual_seed(0)
    model = create_model("sharpose_small_256x192", depth=2, embed_dim=64, num_heads=4, backend="reference")
    model = model.eval().to(device)
    with torch.no_grad():  # large attention logits: scale the qkv projections up
        for block in model.modules():
            if hasattr(block, "qkv") and isinstance(block.qkv, torch.nn.Linear):
                block.qkv.weight.mul_(20.0)
    images = torch.randn(2, 3, 256, 192, device=device)
    with torch.no_grad():
        expected = model(images).patch_scores
        model.backend = "triton"
        ours = model(images).patch_scores
    assert torch.isfinite(expected).all()
    assert torch.isfinite(ours).all(), "non-finite patch scores on the Triton backend"
    # fp32 throughout; the score is a sum of softmax probabilities (<= 17 per layer), reduced in a
    # different order: a few hundred fp32 roundings of values <= 17 per element at most.
    tol = 256 * EPS32 * max(1.0, expected.abs().max().item()) * math.sqrt(expected.shape[1])
    assert (ours - expected).abs().max().item() <= tol
