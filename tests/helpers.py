"""Shared test helpers: error bounds derived from the dtype and the operation, shared inputs.

Rounding model used by every tolerance in the suite
---------------------------------------------------
One floating-point operation in a dtype with unit roundoff u = eps / 2 errs by at most u relative
to its exact result. A sum of n terms accumulated in that dtype errs by at most (n - 1) u sum|x_i|
whatever the order (the worst case); when the roundings are independent the error grows like
sqrt(n) u sum|x_i| (the typical case). Two results of the same computation summed in different
orders (threads, tiles, atomics, batch sizes) each carry such an error, so they may differ by
twice it; tolerances are therefore scaled by the magnitude of what is summed, never fixed.

Kernels against references
--------------------------
A kernel and its PyTorch reference do the same math in different orders, so neither is exact.
Both are compared with the same computation in float64 (the 'exact' result), and the
kernel may err at most `factor` times as much as PyTorch itself does in the kernel's precision
(FlashAttention's criterion, factor 2), plus a floor of a few ulps of the result's magnitude for
the cases where PyTorch happens to be exact (length-1 softmax, a copy).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

DATA_DIR = Path(__file__).parent / "data"
OFFICIAL = DATA_DIR / "reference" / "official-tiny-a"

# Where PyTorch's own error is (nearly) zero, the kernel may still round differently: this many
# ulps of the result's largest magnitude are always allowed.
FLOOR_ULPS = 4


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: the largest relative error of one rounding to `dtype`."""
    return torch.finfo(dtype).eps / 2


def summation_bound(dtype: torch.dtype, n_terms: int, abs_sum: float, worst_case: bool = False) -> float:
    """Error bound of a sum of `n_terms` terms whose magnitudes add up to `abs_sum`, accumulated in
    `dtype`: (n - 1) u sum|x| in the worst case, else the typical sqrt(n) u sum|x| (x 3, three
    standard deviations of a sum of independent roundings)."""
    n = max(n_terms, 1)
    growth = (n - 1) if worst_case else 3 * math.sqrt(n)
    return max(growth, 1) * unit_roundoff(dtype) * abs_sum


def network_rel_tolerance(longest_reduction: int, dtype: torch.dtype = torch.float32) -> float:
    """Two evaluations of a network in `dtype` that sum in different orders (another code path,
    batch shape or thread count), relative to the output's magnitude: twice the worst-case
    relative error of its longest reduction."""
    return 2 * summation_bound(dtype, longest_reduction, 1.0, worst_case=True)


def max_abs(t: torch.Tensor) -> float:
    return t.detach().abs().max().item() if t.numel() else 0.0


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().double() - expected.detach().double()).abs().max().item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, bound: float | torch.Tensor, what: str) -> None:
    """Same shape, finite, and |actual - expected| <= bound (a bound the caller derived: one number,
    or a tensor of per-element bounds)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    if actual.numel() == 0:
        return
    err = (actual.detach().double() - expected.detach().double()).abs()
    excess = err - (bound.double() if isinstance(bound, torch.Tensor) else bound)
    worst = int(excess.argmax())
    allowed = bound.flatten()[worst].item() if isinstance(bound, torch.Tensor) else bound
    assert excess.flatten()[worst] <= 0, (
        f"{what}: error {err.flatten()[worst].item():.3g} > bound {allowed:.3g} at flat index {worst} "
        f"(|expected| <= {max_abs(expected):.3g})"
    )


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "") -> None:
    """max |actual - expected| <= rel * max |expected|: the error relative to the result's own scale."""
    assert_close(actual, expected, rel * max_abs(expected), what or "values")


def lse_recompute_bound(logits: torch.Tensor, magnitude: float) -> float:
    """Error a gradient gains when its softmax probabilities are recomputed from the stored
    log-sum-exp in the log2 domain, p = 2^(t - lse2) with t = logit * log2(e), as the kernels'
    backward does (PyTorch's backward reuses the forward's probabilities). Rounding t (product and
    scale constant), lse2 and their difference, in float32 whatever the inputs' dtype, moves the
    exponent by at most u (3 max|t| + 2 max|lse2|), each probability relatively by ln 2 times that,
    and a gradient built from them by that times its `magnitude`."""
    if logits.numel() == 0:
        return 0.0
    t = max_abs(logits) / math.log(2)
    lse2 = t + math.log2(logits.shape[-1])
    return math.log(2) * unit_roundoff(torch.float32) * (3 * t + 2 * lse2) * magnitude


def assert_as_accurate_as_torch(
    actual: torch.Tensor,
    exact: torch.Tensor,
    torch_result: torch.Tensor,
    what: str,
    factor: float = 2.0,
    reorder: float = 0.0,
    magnitude: float | None = None,
    recompute: float = 0.0,
) -> None:
    """FlashAttention's criterion: |actual - exact| <= factor * |torch_result - exact| + floor, where
    `exact` is the computation in float64 and `torch_result` the same computation by PyTorch
    in `actual`'s precision; the floor is FLOOR_ULPS ulps of max|exact| in that precision.
    `reorder` adds the bound of a reduction the kernel does in another order than PyTorch
    (`summation_bound`), where that, not rounding to the dtype, dominates. `magnitude` replaces
    max|exact| in the floor where the result is a cancellation of larger terms (a gradient that
    vanishes exactly while its terms do not). `recompute` adds the error of recomputing the
    probabilities from the log-sum-exp (`lse_recompute_bound`), which PyTorch's backward does not do."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert actual.shape == exact.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    ours, theirs = max_abs_error(actual, exact), max_abs_error(torch_result, exact)
    floor = FLOOR_ULPS * 2 * unit_roundoff(actual.dtype) * (max_abs(exact) if magnitude is None else magnitude)
    bound = factor * theirs + floor + reorder + recompute
    assert ours <= bound, (
        f"{what}: error {ours:.3g} vs the float64 result exceeds {factor} x PyTorch's "
        f"own {actual.dtype} error {theirs:.3g} + floor {floor:.3g} (|exact| <= {max_abs(exact):.3g})"
    )


def official_tiny_model(**overrides):
    """The released-code model of official-tiny-a (tests/data), built from its config.json with its
    weights loaded; returns (model in eval mode, the released code's outputs)."""
    from sharpose import SHaRPose, load_checkpoint

    cfg = json.loads((OFFICIAL / "config.json").read_text())
    expected = torch.load(OFFICIAL / "expected.pt", weights_only=True)
    coarse, fine = cfg["img_sizes"]
    assert [2 * s for s in coarse] == fine, "the coarse stage runs at half the input resolution"
    model = SHaRPose(
        input_size=tuple(fine),
        patch_size=cfg["patch_size"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        num_keypoints=cfg["num_keypoints"],
        alpha=cfg["alpha"],
        beta=cfg["beta"],
        heatmap_size=tuple(cfg["heatmap_size"]),
        qp_threshold=float(expected["qp_threshold"]),
        **overrides,
    )
    assert sorted(model.ema_weights) == cfg["ema_layers"]
    load_checkpoint(model, OFFICIAL / "checkpoint.pth")
    return model.eval(), expected


# official-tiny-a against the released code's outputs: its longest reduction is the patch
# embedding's 3 * 16 * 16 terms
OFFICIAL_PARITY_REL = network_rel_tolerance(3 * 16 * 16)


# ------------------------------------------------------------------------------------------------
# Inputs of the token composition op (kernels.compose_tokens)
# ------------------------------------------------------------------------------------------------

K = 17  # keypoint tokens
GRID_256 = (8, 6)  # 256x192 input: coarse 8x6, fine 16x12
TOKEN_INPUTS = ("keypoint_tokens", "fine_embed", "fine_pos", "reuse", "coarse_embed")


def make_inputs(ks, coarse_grid, dim, dtype=torch.float32, device="cpu", order_dtype=torch.int64,
                num_keypoints=K, generator=None):
    """Random inputs of compose_tokens for samples selecting ks[i] patches each."""
    hc, wc = coarse_grid
    n_c, R, s_p = hc * wc, len(ks), sum(ks)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    order = torch.stack([torch.randperm(n_c, generator=generator) for _ in range(R)]) if R else torch.zeros(0, n_c)
    lengths = torch.tensor([num_keypoints + n_c + 3 * k for k in ks], dtype=torch.long)
    return dict(
        keypoint_tokens=randn(num_keypoints, dim),
        fine_embed=randn(4 * s_p, dim),
        fine_pos=randn(4 * n_c, dim),
        reuse=randn(s_p, dim),
        coarse_embed=randn(R, n_c, dim),
        order=order.to(device=device, dtype=order_dtype),
        cu_seqlens=F.pad(lengths.cumsum(0), (1, 0)).to(device=device, dtype=torch.int32),
        coarse_grid=coarse_grid,
        max_seqlen=num_keypoints + n_c + 3 * max(ks, default=0),
    )


def call(fn, args, requires_grad=False):
    """fn(**args) on leaf copies of the token inputs; returns (out, leaves)."""
    leaves = {n: args[n].detach().clone().requires_grad_(requires_grad) for n in TOKEN_INPUTS}
    return fn(**{**args, **leaves}), leaves


def grads_of(leaves):
    return {n: leaves[n].grad for n in TOKEN_INPUTS}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`sharpose ARGV` in this process: (exit code, stdout, stderr)."""
    from sharpose import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def exact_head_terms(q, k, rows, cols, scale, weight):
    """Eq. 7's one-layer term per head, written directly in float64: (B, H, n_cols), weight / H times
    the softmax probabilities summed over the query rows, restricted to the key columns. Its sum
    over heads is the term."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = ((q.double() @ k.double().transpose(-2, -1)) * scale).softmax(dim=-1)
    return weight / q.shape[1] * probs[:, :, rows[0]:rows[1], cols[0]:cols[1]].sum(dim=2)
