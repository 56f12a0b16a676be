"""Sparse token composition (kernels/token_composition.py) against its PyTorch reference.

Forward and the gradients of all five token inputs, on ragged batches (k_i = 0 and k_i = N_c
included), one sample, no sample (every sample exited), the model's grids (coarse 12x9 / 8x6 and
a tiny 4x3) and D = 64, 96, 384. Without a GPU the kernels run under TRITON_INTERPRET=1
(tests/conftest.py). The reference itself is checked against a per-sample loop written from the
contract, and the composed tokens against the released op chain (full reuse MLP + nearest
upsample + add + gather + cat), up to the order of the tokens inside each sequence.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels import reference
from helpers import (
    GRID_256,
    K,
    TOKEN_INPUTS,
    assert_close,
    call,
    grads_of,
    make_inputs,
    max_abs,
    summation_bound,
    unit_roundoff,
)
from kernels.token_composition import (
    compose_tokens,
    compose_tokens_backward,
    compose_tokens_forward,
    compose_tokens_padded,
    composition_config,
)

GRID_384 = (12, 9)  # 384x288 input: coarse 12x9, fine 24x18
GRID_TINY = (4, 3)  # fine 8x6


def loop_oracle(keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, cu_seqlens, coarse_grid,
                max_seqlen):
    """The contract, sample by sample, in words: keypoints, 4 children per selected slot, unselected coarse."""
    wc = coarse_grid[1]
    wf = 2 * wc
    n_k, n_c = keypoint_tokens.shape[0], coarse_embed.shape[1]
    pieces, offset = [], 0
    for i in range(coarse_embed.shape[0]):
        k = (int(cu_seqlens[i + 1]) - int(cu_seqlens[i]) - n_k - n_c) // 3
        pieces.append(keypoint_tokens)
        for s in range(k):
            p = int(order[i, s])
            for c in range(4):
                dy, dx = divmod(c, 2)
                f = (p // wc) * 2 * wf + (p % wc) * 2 + dy * wf + dx
                pieces.append((fine_embed[4 * (offset + s) + c] + fine_pos[f] + reuse[offset + s])[None])
        pieces.append(coarse_embed[i, order[i, k:].long()])
        offset += k
    return torch.cat(pieces) if pieces else keypoint_tokens.new_zeros(0, keypoint_tokens.shape[1])


def abs_grad_sums(args, grad):
    """Per gradient element, the sum of the magnitudes of the terms it adds up: the op is a sum of
    copies, so that is its float32 backward of |grad|."""
    out, leaves = call(reference.compose_tokens, {**args, **{n: args[n].float() for n in TOKEN_INPUTS}},
                       requires_grad=True)
    out.backward(grad.abs().float())
    return grads_of(leaves)


def assert_grads(got, want, abs_sums):
    """Copies (fine_embed, coarse_embed) are exact in float32. The sums (reuse: 4 rows, keypoints: R
    rows, fine_pos: up to R rows, atomics in any order) are float32 sums in another order than the
    reference's: per element, at most twice the worst-case error of an n-term sum,
    n = max(4, R), relative to `abs_sums`; a half-precision result adds its rounding (one ulp)."""
    n_terms = max(4, abs_sums["coarse_embed"].shape[0])
    for name in TOKEN_INPUTS:
        g, w = got[name], want[name]
        assert g is not None and g.dtype == w.dtype and g.shape == w.shape, name
        if g.dtype == torch.float32 and name in ("fine_embed", "coarse_embed"):
            assert torch.equal(g, w), name
            continue
        bound = 2 * summation_bound(torch.float32, n_terms, 1.0, worst_case=True) * abs_sums[name]
        if g.dtype != torch.float32:
            bound = bound + 2 * unit_roundoff(g.dtype) * w.float().abs()
        assert_close(g, w, bound, f"d({name})")


def check_against_reference(args, dtype):
    out, leaves = call(compose_tokens, args, requires_grad=True)
    expected, ref_leaves = call(reference.compose_tokens, args, requires_grad=True)
    T = int(args["cu_seqlens"][-1])
    assert out.shape == expected.shape == (T, args["keypoint_tokens"].shape[1])
    assert out.dtype == dtype
    # the same adds in the same order and dtype: the rounding matches too
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn(out.shape, dtype=torch.float32).to(out)
    out.backward(grad)
    if dtype == torch.float32:
        expected.backward(grad)
        want = grads_of(ref_leaves)
    else:  # the reference's half-precision autograd sums in half; compare with its fp32 sums, rounded
        ref32, ref32_leaves = call(reference.compose_tokens, {**args, **{n: args[n].float() for n in TOKEN_INPUTS}},
                                   requires_grad=True)
        ref32.backward(grad.float())
        want = {n: g.to(dtype) for n, g in grads_of(ref32_leaves).items()}
    assert_grads(grads_of(leaves), want, abs_grad_sums(args, grad))


# ----------------------------------------------------------------------------------------------
# The reference against the contract
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ks, grid", [([0, 3, 12, 5], GRID_TINY), ([20], GRID_256), ([33, 0, 108, 7], GRID_384), ([], GRID_TINY)]
)
def test_reference_matches_contract(ks, grid):
    args = make_inputs(ks, grid, 24)
    assert torch.equal(reference.compose_tokens(**args), loop_oracle(**args))


# ----------------------------------------------------------------------------------------------
# Triton against the reference
# ----------------------------------------------------------------------------------------------

CASES = {
    "ragged-tiny": ([0, 3, 12, 5], GRID_TINY, 96),  # k = 0 and k = N_c
    "single-256": ([20], GRID_256, 64),
    "ragged-384": ([33, 0, 108, 7], GRID_384, 64),
    "none-exit-256-d384": ([20, 20, 20], GRID_256, 384),
    "all-zero-k": ([0, 0], GRID_TINY, 64),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_reference(case, dtype, device):
    ks, grid, dim = CASES[case]
    check_against_reference(make_inputs(ks, grid, dim, dtype, device), dtype)


@pytest.mark.gpu(reason="the Triton interpreter has no bf16")
@pytest.mark.parametrize("case", ["ragged-tiny", "ragged-384", "none-exit-256-d384"])
def test_matches_reference_bf16(case, device):
    ks, grid, dim = CASES[case]
    check_against_reference(make_inputs(ks, grid, dim, torch.bfloat16, device), torch.bfloat16)


def test_no_sample_refined(device):
    """R = 0: every sample exited after the coarse stage."""
    args = make_inputs([], GRID_256, 64, device=device)
    out, leaves = call(compose_tokens, args, requires_grad=True)
    assert out.shape == (0, 64)
    out.sum().backward()
    assert torch.equal(leaves["keypoint_tokens"].grad, torch.zeros(K, 64, device=device))
    assert torch.equal(leaves["fine_pos"].grad, torch.zeros(4 * 48, 64, device=device))
    assert leaves["coarse_embed"].grad.shape == (0, 48, 64)
    assert leaves["fine_embed"].grad.shape == (0, 64) and leaves["reuse"].grad.shape == (0, 64)


def test_int32_order_strided_inputs_and_loose_bound(device):
    """int32 order, inputs that are views with row strides (parameters' [0], slices) or channel
    strides (copied by the launcher), max_seqlen only an upper bound (None: K + 4 N_c), a gradient
    with zero strides (sum().backward())."""
    args = make_inputs([4, 0, 9], GRID_TINY, 40, device=device, order_dtype=torch.int32)
    wide = torch.randn(3, 12, 64, device=device)
    args["coarse_embed"] = wide[:, :, 8:48].copy_(args["coarse_embed"])  # row stride 64
    args["fine_pos"] = args["fine_pos"][None].expand(2, -1, -1)[0]
    interleaved = torch.randn(args["reuse"].shape[0], 80, device=device)
    args["reuse"] = interleaved[:, ::2].copy_(args["reuse"])  # channel stride 2
    for max_seqlen in (args["max_seqlen"] + 7, None):
        out = compose_tokens(**{**args, "max_seqlen": max_seqlen})
        assert torch.equal(out, reference.compose_tokens(**args))
    got, leaves = call(compose_tokens, args, requires_grad=True)
    want, ref_leaves = call(reference.compose_tokens, args, requires_grad=True)
    got.sum().backward()
    want.sum().backward()
    assert_grads(grads_of(leaves), grads_of(ref_leaves), abs_grad_sums(args, torch.ones_like(got)))


def test_partial_gradients(device):
    """Frozen inputs get no gradient and the others are unchanged (fine_pos atomics skipped)."""
    args = make_inputs([3, 12], GRID_TINY, 32, device=device)
    leaves = {n: args[n].clone().requires_grad_(n in ("fine_embed", "coarse_embed")) for n in TOKEN_INPUTS}
    out = compose_tokens(**{**args, **leaves})
    grad = torch.randn_like(out)
    out.backward(grad)
    assert leaves["fine_pos"].grad is None and leaves["keypoint_tokens"].grad is None
    ref_out, ref_leaves = call(reference.compose_tokens, args, requires_grad=True)
    ref_out.backward(grad)
    assert torch.equal(leaves["fine_embed"].grad, ref_leaves["fine_embed"].grad)
    assert torch.equal(leaves["coarse_embed"].grad, ref_leaves["coarse_embed"].grad)


@pytest.mark.parametrize("case", ["ragged-tiny", "ragged-384"])
def test_gpu_tiles_under_interpreter(case, device):
    """The compiled (GPU) tile configuration, run here too: partial D blocks, several row blocks."""
    ks, grid, dim = CASES[case]
    args = make_inputs(ks, grid, dim, device=device)
    cfg = composition_config(dim, torch.float32, interpreter=False)
    out = compose_tokens_forward(**args, config=cfg)
    assert torch.equal(out, reference.compose_tokens(**args))
    grad = torch.randn_like(out)
    ref_out, ref_leaves = call(reference.compose_tokens, args, requires_grad=True)
    ref_out.backward(grad)
    grads = compose_tokens_backward(grad, args["order"], args["cu_seqlens"], grid, args["max_seqlen"], K, config=cfg)
    assert_grads(dict(zip(TOKEN_INPUTS, grads)), grads_of(ref_leaves), abs_grad_sums(args, grad))


# ----------------------------------------------------------------------------------------------
# Every output row is written (no zero fill is relied on)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpreter_tiles", [True, False])
def test_every_row_written(interpreter_tiles, device):
    ks, grid, dim = [0, 5, 12, 1], GRID_TINY, 72
    args = make_inputs(ks, grid, dim, device=device)
    args["max_seqlen"] += 5  # a loose bound: programs past the end must not write
    cfg = composition_config(dim, torch.float32, interpreter=interpreter_tiles)
    T = int(args["cu_seqlens"][-1])
    out = torch.full((T, dim), float("nan"), device=device)
    compose_tokens_forward(**args, out=out, config=cfg)
    assert not out.isnan().any()
    assert torch.equal(out, reference.compose_tokens(**args))

    grad = torch.randn(T, dim, device=device)
    R, n_c, s_p = len(ks), 12, sum(ks)
    buffers = tuple(torch.full(shape, float("nan"), device=device)
                    for shape in ((K, dim), (4 * s_p, dim), (s_p, dim), (R, n_c, dim)))
    grads = compose_tokens_backward(grad, args["order"], args["cu_seqlens"], grid, args["max_seqlen"], K,
                                    grads=buffers, config=cfg)
    for g in grads:
        assert not g.isnan().any()
    ref_out, ref_leaves = call(reference.compose_tokens, args, requires_grad=True)
    ref_out.backward(grad)
    assert_grads(dict(zip(TOKEN_INPUTS, grads)), grads_of(ref_leaves), abs_grad_sums(args, grad))


# ----------------------------------------------------------------------------------------------
# Padded layout and the backend switch
# ----------------------------------------------------------------------------------------------


def test_padded_layout(device):
    R, k, grid, dim = 3, 5, GRID_TINY, 32
    args = make_inputs([k] * R, grid, dim, device=device)
    packed = compose_tokens(**args)
    L = K + 12 + 3 * k
    padded_args = dict(keypoint_tokens=args["keypoint_tokens"], fine_pos=args["fine_pos"],
                       coarse_embed=args["coarse_embed"], order=args["order"], coarse_grid=grid, k=k)
    for fine_embed, reuse in ((args["fine_embed"], args["reuse"]),
                              (args["fine_embed"].reshape(R, 4 * k, dim), args["reuse"].reshape(R, k, dim))):
        out = compose_tokens_padded(fine_embed=fine_embed, reuse=reuse, **padded_args)
        assert out.shape == (R, L, dim)
        assert torch.equal(out, packed.reshape(R, L, dim))
        assert torch.equal(out, reference.compose_tokens_padded(fine_embed=fine_embed, reuse=reuse, **padded_args))
    with pytest.raises(ValueError, match="k must be in"):
        compose_tokens_padded(fine_embed=args["fine_embed"], reuse=args["reuse"], **{**padded_args, "k": 13})


def test_backend_switch(device):
    assert kernels.ops_for("reference", device).compose_tokens is reference.compose_tokens
    if device.type == "cuda" or kernels.interpreter_enabled():
        assert kernels.ops_for("triton", device).compose_tokens is compose_tokens
    assert kernels.compose_tokens is compose_tokens
    assert kernels.compose_tokens_padded is compose_tokens_padded


# ----------------------------------------------------------------------------------------------
# The released op chain (SHaRPose.compose_fine_tokens), up to token order within each sequence
# ----------------------------------------------------------------------------------------------


def released_chain(images, patch, keypoint_tokens, fine_pos, coarse_embed, coarse_out, reuse_block, order, k,
                   coarse_grid):
    """Reuse block on every coarse output, nearest upsample, add to the full fine embedding, gather, cat."""
    B, D = coarse_out.shape[0], coarse_out.shape[2]
    (hc, wc), (hf, wf) = coarse_grid, (2 * coarse_grid[0], 2 * coarse_grid[1])
    reuse = reuse_block(coarse_out).transpose(1, 2).reshape(B, D, hc, wc)
    reuse = F.interpolate(reuse, size=(hf, wf), mode="nearest").flatten(2).transpose(1, 2)
    fine_tokens = patch(images).flatten(2).transpose(1, 2) + fine_pos + reuse
    chosen, rest = order[:, :k], order[:, k:]
    top_left = (chosen // wc) * 2 * wf + (chosen % wc) * 2
    children = torch.cat([top_left + dy * wf + dx for dy in (0, 1) for dx in (0, 1)], dim=1)  # child-major

    def gather(tokens, index):
        return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, D))

    return torch.cat([keypoint_tokens.expand(B, -1, -1), gather(fine_tokens, children), gather(coarse_embed, rest)], 1)


def sparse_pipeline(images, patch, keypoint_tokens, fine_pos, coarse_embed, coarse_out, reuse_block, order, k,
                    coarse_grid, op):
    """Gather the parents, reuse block on them only, patch-embed only their fine children, compose."""
    B, D = coarse_out.shape[0], coarse_out.shape[2]
    P = patch.kernel_size[0]
    wc = coarse_grid[1]
    chosen = order[:, :k]
    parents = coarse_out.gather(1, chosen.unsqueeze(-1).expand(-1, -1, D))
    reuse = reuse_block(parents.reshape(B * k, D))
    c = torch.arange(4)
    fy = (chosen // wc * 2)[..., None] + c // 2  # (B, k, 4) fine rows / columns, parent-major
    fx = (chosen % wc * 2)[..., None] + c % 2
    cells = images.unflatten(2, (-1, P)).unflatten(4, (-1, P))  # (B, C, hf, P, wf, P)
    pixels = cells.permute(0, 2, 4, 1, 3, 5)[torch.arange(B)[:, None, None], fy, fx]  # (B, k, 4, C, P, P)
    fine_embed = F.linear(pixels.reshape(B * k * 4, -1), patch.weight.flatten(1), patch.bias)
    return op(keypoint_tokens, fine_embed, fine_pos, reuse, coarse_embed, order, coarse_grid, k)


@pytest.mark.parametrize("grid", [GRID_TINY, GRID_256])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_matches_released_chain(grid, backend, device):
    B, C, P, D = 3, 3, 4, 48
    hc, wc = grid
    n_c = hc * wc
    k = math.ceil(0.4 * n_c)
    patch = nn.Conv2d(C, D, P, stride=P).to(device)
    reuse_block = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D)).to(device)
    images = torch.randn(B, C, 2 * hc * P, 2 * wc * P, device=device)
    keypoint_tokens = torch.randn(K, D, device=device)
    fine_pos = torch.randn(4 * n_c, D, device=device)
    coarse_embed = torch.randn(B, n_c, D, device=device)
    coarse_out = torch.randn(B, n_c, D, device=device)
    order = torch.randn(B, n_c, device=device).argsort(dim=1, descending=True)
    op = reference.compose_tokens_padded if backend == "reference" else compose_tokens_padded
    with torch.no_grad():
        released = released_chain(images, patch, keypoint_tokens, fine_pos, coarse_embed, coarse_out, reuse_block,
                                  order, k, grid)
        ours = sparse_pipeline(images, patch, keypoint_tokens, fine_pos, coarse_embed, coarse_out, reuse_block,
                               order, k, grid, op)
    assert ours.shape == released.shape == (B, K + n_c + 3 * k, D)
    for b in range(B):  # the same tokens per sequence (as a multiset): a nearest-row matching
        match = torch.cdist(ours[b], released[b]).argmin(dim=1)
        assert torch.equal(match.sort().values, torch.arange(len(match), device=device)), "not a bijection"
        # the fine embedding is a C P^2-term product here and a convolution there, the reuse MLP runs
        # on other batch shapes (its longest reduction: 4 D terms): each within the worst-case
        # error of that reduction relative to the tokens' magnitude
        bound = 2 * summation_bound(torch.float32, max(C * P * P, 4 * D), max_abs(released[b]), worst_case=True)
        assert_close(ours[b], released[b][match], bound, f"sample {b}'s tokens")
    # the keypoint and the unselected coarse tokens are in the same places
    torch.testing.assert_close(ours[:, :K], released[:, :K], rtol=0, atol=0)
    torch.testing.assert_close(ours[:, K + 4 * k:], released[:, K + 4 * k:], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------


def _bad(args, **changes):
    return {**args, **changes}


def shape_and_type_errors(args):
    return [
        (dict(keypoint_tokens=args["keypoint_tokens"][None]), "keypoint_tokens must be a 2-D"),
        (dict(fine_embed=args["fine_embed"][:, :16]), "fine_embed has D = 16"),
        (dict(fine_embed=args["fine_embed"][:-1]), "4 children per selected patch"),
        (dict(reuse=args["reuse"][:-1]), "one row per selected patch"),
        (dict(fine_pos=args["fine_pos"][:-1]), "fine_pos must hold"),
        (dict(coarse_embed=args["coarse_embed"][:, :-1]), "coarse_grid"),
        (dict(coarse_grid=(4, 2)), "coarse_grid"),
        (dict(coarse_grid=(4, 3.0)), "coarse_grid must be two positive ints"),
        (dict(order=args["order"][:, :-1]), "order must be"),
        (dict(order=args["order"].float()), "int64 or int32"),
        (dict(cu_seqlens=args["cu_seqlens"].long()), "cu_seqlens must be int32"),
        (dict(cu_seqlens=args["cu_seqlens"][:-1]), "R \\+ 1"),
        (dict(reuse=args["reuse"].double()), "share one dtype"),
        (dict(max_seqlen=K + 12 + 3 * 3), "max_seqlen"),  # below K + N_c + 3 ceil(S_p / R) = ... + 3 * 4
        (dict(max_seqlen=torch.tensor(60)), "python int"),
    ]


def value_errors(args, device):
    """Checks of the values of cu_seqlens / order: the Triton op reads them only on the CPU, where
    that costs no device sync."""
    return [
        (dict(cu_seqlens=args["cu_seqlens"] + 1), "cu_seqlens\\[0\\] must be 0"),
        (dict(cu_seqlens=torch.tensor([0, K + 12 + 7, 2 * (K + 12) + 21], dtype=torch.int32, device=device)),
         "K \\+ N_c \\+ 3 k_i"),
        (dict(cu_seqlens=torch.tensor([0, K + 12 + 3, 2 * (K + 12) + 9], dtype=torch.int32, device=device)),
         "selected patches in all"),
        (dict(order=args["order"] + 12), "coarse patch indices"),
        (dict(max_seqlen=K + 12 + 3 * 4), "exceeds max_seqlen"),
    ]


@pytest.mark.parametrize("op", [compose_tokens, reference.compose_tokens], ids=["triton", "reference"])
def test_argument_errors(op, device):
    args = make_inputs([2, 5], GRID_TINY, 32, device=device)
    for changes, message in shape_and_type_errors(args):
        with pytest.raises((ValueError, TypeError), match=message):
            op(**_bad(args, **changes))
    half = {n: args[n].half() for n in TOKEN_INPUTS}
    op(**_bad(args, **half))  # one dtype for all, whichever: accepted
    if device.type == "cpu":
        with pytest.raises(ValueError, match="one device"):
            op(**_bad(args, order=args["order"].to("meta")))


@pytest.mark.parametrize("op", [compose_tokens, reference.compose_tokens], ids=["triton", "reference"])
def test_argument_value_errors(op, device):
    if device.type == "cuda" and op is compose_tokens:
        pytest.skip("the Triton op checks values only on the CPU: on the GPU that would need a device sync")
    args = make_inputs([2, 5], GRID_TINY, 32, device=device)
    for changes, message in value_errors(args, device):
        with pytest.raises(ValueError, match=message):
            op(**_bad(args, **changes))


# ----------------------------------------------------------------------------------------------
# Random batches
# ----------------------------------------------------------------------------------------------


@st.composite
def batches(draw):
    grid = draw(st.sampled_from([GRID_TINY, (2, 2), (3, 5), GRID_256]))
    n_c = grid[0] * grid[1]
    ks = draw(st.lists(st.integers(0, n_c), min_size=0, max_size=4))
    dim = draw(st.sampled_from([8, 24, 40]))
    num_keypoints = draw(st.sampled_from([0, 1, 17]))
    order_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    seed = draw(st.integers(0, 2**31 - 1))
    return ks, grid, dim, num_keypoints, order_dtype, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_random_batches(batch, device):
    ks, grid, dim, num_keypoints, order_dtype, seed = batch
    gen = torch.Generator().manual_seed(seed)
    args = make_inputs(ks, grid, dim, device=device, order_dtype=order_dtype, num_keypoints=num_keypoints,
                       generator=gen)
    out, leaves = call(compose_tokens, args, requires_grad=True)
    expected, ref_leaves = call(reference.compose_tokens, args, requires_grad=True)
    assert torch.equal(out, expected)
    grad = torch.randn(out.shape, generator=gen).to(out)
    out.backward(grad)
    expected.backward(grad)
    assert_grads(grads_of(leaves), grads_of(ref_leaves), abs_grad_sums(args, grad))
