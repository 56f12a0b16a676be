"""The Triton fused attention (+ keypoint-attention score) against `kernels.reference`.

On CPU the kernels run under the Triton interpreter (tests/conftest.py), so the shapes stay
modest; on a GPU the same tests run compiled. Every dtype is judged by FlashAttention's criterion
(tests/helpers.py): against the float64 reference on the same inputs, the kernel may err at most
twice as much as PyTorch in the kernel's dtype. bf16 runs only on CUDA (the interpreter has none).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import fused_attention, reference
from kernels.reference import score_slots
from helpers import (
    assert_as_accurate_as_torch, assert_close, exact_head_terms, lse_recompute_bound, max_abs, summation_bound,
)
from kernels.fused_attention import (
    LOG2E,
    AttentionConfig,
    KernelLaunch,
    attention,
    attention_backward,
    attention_config,
    attention_forward,
    attention_with_score,
)



def _qkv(B, H, N, d, dtype, device, requires_grad=True):
    """q, k, v as the model makes them: strided views of one fused (B, N, 3*H*d) projection."""
    x = torch.randn(B, N, 3 * H * d, device=device, dtype=torch.float32).to(dtype)
    x.requires_grad_(requires_grad)
    return x, _views(x, B, H, N, d)


def _views(x, B, H, N, d):
    qkv = x.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _kv_views(kv, B, H, Nk, d):
    kvv = kv.reshape(B, Nk, 2, H, d).permute(2, 0, 3, 1, 4)
    return kvv[0], kvv[1]


def _model_score_ranges(N):
    """Coarse-stage settings: keypoint rows 1..16, visual columns 18..N (clipped for tiny N)."""
    rows = (min(1, N), min(17, N))
    cols = (min(18, N), N)
    return rows, cols


def head_terms(ops, q, k, v, rows=None, cols=None, scale=None, weight=1.0):
    """(out, per-head score term (B, H, n_cols)) of `ops.attention_with_score`: the term summed over
    its slots, after checking the term contract (shape, dtype, no gradient)."""
    out, term = ops.attention_with_score(q, k, v, rows, cols, scale=scale, score_weight=weight)
    (r0, r1), (c0, c1) = rows or (0, q.shape[2]), cols or (0, k.shape[2])
    assert term.shape == (q.shape[0], q.shape[1], score_slots(r1 - r0), c1 - c0) and term.dtype == torch.float32
    assert not term.requires_grad
    return out, term.sum(dim=2)


def _check(B, H, N, d, dtype, device, rows=None, cols=None, with_score=True, scale=None, backward=True,
           weight=0.37, Nk=None, seed=None):
    """Ours, the exact (float64) result and PyTorch's own in `dtype` on the same inputs (drawn after
    torch.manual_seed(seed) when given): out, the score term of each head and the gradients of ours
    may err at most twice as much as PyTorch's (FlashAttention's criterion, tests/helpers.py)."""
    if seed is not None:
        torch.manual_seed(seed)
    x, (q, k, v) = _qkv(B, H, N, d, dtype, device)
    kv = None
    if Nk is not None:  # cross attention: separate key/value sequence
        kv = torch.randn(B, Nk, 2 * H * d, device=device).to(dtype).requires_grad_()
        k, v = _kv_views(kv, B, H, Nk, d)
    n_keys = k.shape[2]
    rows = rows if rows is not None else (0, N)
    cols = cols if cols is not None else (0, n_keys)
    grad = torch.randn(B, H, N, d, device=device)

    def run(ops, inputs_dtype):
        """ops' attention on leaf copies of the inputs in `inputs_dtype`: (out, per-head score terms, grads)."""
        x_ = x.detach().to(inputs_dtype).requires_grad_()
        q_, k_, v_ = _views(x_, B, H, N, d)
        leaves = [x_]
        if kv is not None:
            kv_ = kv.detach().to(inputs_dtype).requires_grad_()
            k_, v_ = _kv_views(kv_, B, H, Nk, d)
            leaves.append(kv_)
        if with_score:
            out, terms = head_terms(ops, q_, k_, v_, rows, cols, scale, weight)
        else:
            out, terms = ops.attention(q_, k_, v_, scale=scale), None
        grads = torch.autograd.grad(out, leaves, grad.to(out.dtype)) if backward else ()
        if with_score and inputs_dtype == torch.float64:  # the score term is float32: the exact one apart
            terms = exact_head_terms(q_, k_, rows, cols, scale, weight)
        return out, terms, grads

    ours, exact, theirs = run(fused_attention, dtype), run(reference, torch.float64), run(reference, dtype)
    assert ours[0].dtype == dtype
    assert_as_accurate_as_torch(ours[0], exact[0], theirs[0], "out")
    if with_score:
        # The kernel's probabilities are float32 whatever the input dtype (float32 logits), so
        # PyTorch's counterpart is the reference on float32 inputs.
        torch_score = theirs[1] if dtype == torch.float32 else run(reference, torch.float32)[1]
        reorder = _score_reorder_bound(rows, exact[1])
        assert_as_accurate_as_torch(ours[1], exact[1], torch_score, "score term per head", reorder=reorder)
    # dq is a cancellation (dO.V minus the row's delta) that vanishes where a row attends to one key:
    # its rounding scales with the op's largest gradient, not with its own size
    grad_magnitude = max((max_abs(g) for g in exact[2]), default=0.0)
    logits = q.detach().double() @ k.detach().double().transpose(-2, -1) * (d ** -0.5 if scale is None else scale)
    recompute = lse_recompute_bound(logits, grad_magnitude)
    for name, a, b, c in zip(("d(qkv)", "d(kv)"), ours[2], exact[2], theirs[2]):
        assert_as_accurate_as_torch(a, b, c, name, magnitude=grad_magnitude, recompute=recompute)


# ------------------------------------------------------------------------------------------------
# Forward + backward against the reference (fp32, tight)
# ------------------------------------------------------------------------------------------------

SHAPES_FP32 = [
    # B, H, N, d
    (1, 1, 1, 16),
    (1, 2, 2, 32),
    (2, 3, 17, 64),
    (3, 1, 64, 16),
    (1, 2, 65, 128),
    (2, 12, 66, 32),  # coarse stage, 256x192
    (1, 2, 125, 64),  # fine stage, 256x192, alpha 0.4
    (1, 2, 126, 32),  # coarse stage, 384x288
    (3, 2, 100, 64),
    (1, 12, 126, 64),  # coarse stage, 384x288, Base
    (2, 4, 224, 32),
    (1, 1, 129, 128),
    (1, 1, 450, 32),
    pytest.param(1, 2, 450, 128, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("B,H,N,d", SHAPES_FP32)
def test_fp32_with_model_score(device, B, H, N, d):
    rows, cols = _model_score_ranges(N)
    _check(B, H, N, d, torch.float32, device, rows, cols)


@pytest.mark.parametrize("B,H,N,d", [(1, 1, 1, 32), (2, 2, 33, 16), (1, 3, 125, 64), (1, 1, 224, 32), (1, 1, 450, 64)])
def test_fp32_without_score(device, B, H, N, d):
    _check(B, H, N, d, torch.float32, device, with_score=False)


@pytest.mark.parametrize("d", [8, 24, 80])
def test_fp32_head_dims_not_power_of_two(device, d):
    _check(2, 2, 70, d, torch.float32, device, rows=(1, 18), cols=(18, 70))


def test_fp32_custom_scale(device):
    _check(1, 2, 66, 32, torch.float32, device, rows=(1, 17), cols=(18, 66), scale=0.31)


def test_fp32_cross_attention(device):
    """Nq != Nk (the kernels take both lengths; the score columns index the keys)."""
    _check(1, 2, 20, 32, torch.float32, device, rows=(3, 11), cols=(5, 97), Nk=97)


# ------------------------------------------------------------------------------------------------
# The score: edge ranges, accumulation across layers, no gradient
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "N,rows,cols",
    [
        (66, (1, 17), (18, 66)),    # released code: keypoints 1..16 of the 17
        (66, (1, 18), (18, 66)),    # paper: all 17 keypoints
        (125, (0, 17), (17, 125)),  # fine stage layout (no quality token)
        (66, (0, 66), (0, 66)),     # full ranges
        (66, (5, 5), (18, 66)),     # empty rows: a term of zeros
        (66, (1, 17), (66, 66)),    # empty columns
        (130, (60, 70), (0, 130)),  # rows straddle two query blocks (two slots)
        (130, (129, 130), (0, 1)),  # last row, first column
        (200, (1, 200), (63, 129)), # columns straddle key-block boundaries
        (1, (0, 1), (0, 1)),
    ],
)
def test_score_ranges(device, N, rows, cols):
    _check(2, 3, N, 32, torch.float32, device, rows, cols, backward=False)


def _score_reorder_bound(rows, terms):
    """The kernel adds each column's r1 - r0 positive terms per head in its own order (query blocks,
    slots) and rounds each probability differently (exp2 of a shifted logit): the worst-case bound
    of that sum, whose terms add up to the term itself."""
    return summation_bound(torch.float32, rows[1] - rows[0], max_abs(terms), worst_case=True)


def test_score_default_ranges_are_everything(device):
    """score_rows / score_cols default to all rows / all columns: every row of probabilities sums
    to 1, so each sample's term sums to weight * N exactly."""
    B, H, N, d = 2, 3, 40, 16
    _, (q, k, v) = _qkv(B, H, N, d, torch.float32, device, requires_grad=False)
    _, ours = head_terms(fused_attention, q, k, v, weight=0.5)
    _, theirs = head_terms(reference, q, k, v, weight=0.5)
    exact = exact_head_terms(q, k, (0, N), (0, N), None, 0.5)
    assert_as_accurate_as_torch(ours, exact, theirs, "score", reorder=_score_reorder_bound((0, N), exact))
    # the sum adds H * N * N probabilities (/ H) whose exact total is 0.5 N
    assert_close(ours.sum(dim=(1, 2)), torch.full((B,), 0.5 * N, device=device),
                 summation_bound(torch.float32, H * N * N, 0.5 * N), "sum of the score")


def test_score_terms_sum_to_the_ema_over_layers(device):
    """Each layer's weighted term (Eq. 6 unrolled), summed once as the model does (over layers,
    heads and slots), is the EMA of the keypoint attention."""
    B, H, N, d = 2, 12, 66, 32
    beta, layers = 0.99, 3
    ours, ref = [], []
    exact = torch.zeros(B, N - 18, device=device, dtype=torch.float64)
    reorder = 0.0
    for layer in range(layers):
        w = (1 - beta) * beta ** (layers - 1 - layer)
        _, (q, k, v) = _qkv(B, H, N, d, torch.float32, device, requires_grad=False)
        ours.append(attention_with_score(q, k, v, (1, 17), (18, N), score_weight=w)[1])
        ref.append(reference.attention_with_score(q, k, v, (1, 17), (18, N), score_weight=w)[1])
        terms = exact_head_terms(q, k, (1, 17), (18, N), None, w)
        exact += terms.sum(dim=1)
        # per head its 16 rows, then its slots; then the heads
        reorder += summation_bound(torch.float32, H * (16 + score_slots(16)), max_abs(terms.sum(dim=1)),
                                   worst_case=True)
    assert_as_accurate_as_torch(torch.cat(ours, 1).sum(dim=(1, 2)), exact, torch.cat(ref, 1).sum(dim=(1, 2)),
                                "score after 3 layers", reorder=reorder)


def test_score_needs_no_gradient_and_leaves_grads_alone(device):
    B, H, N, d = 1, 2, 66, 32
    x, (q, k, v) = _qkv(B, H, N, d, torch.float32, device)
    out_s, term = attention_with_score(q, k, v, (1, 17), (18, N))
    assert not term.requires_grad and term.grad_fn is None
    out_s.sum().backward()
    grad_with = x.grad.clone()
    x.grad = None
    attention(q, k, v).sum().backward()
    torch.testing.assert_close(x.grad, grad_with, rtol=0, atol=0)


@pytest.mark.parametrize("block_m", [16, 64])
def test_score_term_every_slot_written(device, block_m):
    """The launcher's `term` may be any float32 buffer of the term's shape, strided included: the
    kernel stores every element (NaN-poisoned beforehand), the slots no query block owns as zeros.
    Rows 1..16 fall in two 16-row blocks (both slots owned) or in one 64-row block (slot 1 spare)."""
    B, H, N, d = 2, 2, 66, 16
    _, (q, k, v) = _qkv(B, H, N, d, torch.float32, device, requires_grad=False)
    rows, cols = (1, 17), (18, N)
    config = AttentionConfig(KernelLaunch(block_m, 128), KernelLaunch(64, 64), KernelLaunch(64, 64), 16)
    wide = torch.full((N - 18, score_slots(16), H, B + 1), math.nan, device=device)
    term = wide[..., :B].permute(3, 2, 1, 0)  # (B, H, slots, cols), no unit stride anywhere
    attention_forward(q, k, v, d ** -0.5, rows, cols, 1.0, term=term, config=config)
    assert torch.isfinite(term).all(), "an element of the term was not stored"
    assert wide[..., B].isnan().all(), "the kernel wrote outside the term"
    if block_m == 64:
        assert (term[:, :, 1] == 0).all(), "the spare slot is not zero"
    exact = exact_head_terms(q, k, rows, cols, None, 1.0)
    _, theirs = head_terms(reference, q, k, v, rows, cols)
    assert_as_accurate_as_torch(term.sum(dim=2), exact, theirs, "strided score term",
                                reorder=_score_reorder_bound(rows, exact))


# ------------------------------------------------------------------------------------------------
# Half precision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "B,H,N,d", [(1, 2, 17, 16), (2, 3, 66, 32), (1, 12, 126, 32), (1, 2, 125, 64), (1, 1, 126, 128), (1, 1, 450, 64)]
)
def test_fp16(device, B, H, N, d):
    rows, cols = _model_score_ranges(N)
    _check(B, H, N, d, torch.float16, device, rows, cols)


@pytest.mark.parametrize("B,H,N,d", [(2, 3, 66, 32), (1, 2, 125, 64)])
def test_fp16_extreme_logits(device, B, H, N, d):
    """Softmax scale 1 instead of d^-1/2: logits of tens, a log-sum-exp of tens, peaked probabilities
    (the regime where storing the log-sum-exp in less than float32 shows in the gradients)."""
    rows, cols = _model_score_ranges(N)
    _check(B, H, N, d, torch.float16, device, rows, cols, scale=1.0)


@pytest.mark.parametrize("B,H,N,d", [(2, 2, 125, 64), (1, 3, 224, 32)])
def test_fp16_without_score(device, B, H, N, d):
    _check(B, H, N, d, torch.float16, device, with_score=False)


@pytest.mark.gpu(reason="bf16 needs CUDA: the Triton interpreter has no bfloat16")
@pytest.mark.parametrize(
    "B,H,N,d", [(2, 12, 66, 32), (2, 12, 126, 64), (4, 12, 224, 64), (2, 12, 450, 32), (1, 2, 1, 128)]
)
def test_bf16(device, B, H, N, d):
    rows, cols = _model_score_ranges(N)
    _check(B, H, N, d, torch.bfloat16, device, rows, cols)


@pytest.mark.gpu(reason="the model's batch sizes are only fast enough compiled")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_model_batch_sizes_on_gpu(device, dtype):
    _check(64, 12, 66, 32, dtype, device, (1, 17), (18, 66))
    _check(64, 12, 224, 64, dtype, device, with_score=False)


# ------------------------------------------------------------------------------------------------
# Random shapes
# ------------------------------------------------------------------------------------------------


@st.composite
def _cases(draw, max_n=200, cross=False):
    N = draw(st.integers(1, max_n))
    Nk = draw(st.one_of(st.none(), st.integers(1, max_n))) if cross else None
    n_keys = N if Nk is None else Nk
    r0 = draw(st.integers(0, N))
    r1 = draw(st.integers(r0, N))
    c0 = draw(st.integers(0, n_keys))
    c1 = draw(st.integers(c0, n_keys))
    return dict(
        B=draw(st.integers(1, 3)),
        H=draw(st.integers(1, 3)),
        N=N,
        Nk=Nk,
        d=draw(st.sampled_from([16, 32, 64, 128])),
        with_score=draw(st.booleans()),
        rows=(r0, r1),
        cols=(c0, c1),
        weight=draw(st.floats(0.01, 2.0)),
        seed=draw(st.integers(0, 2**31 - 1)),  # the tensors: each example replays exactly
    )


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.slow
@settings(max_examples=25, **_SETTINGS)
@given(case=_cases(cross=True))
def test_random_shapes_fp32(device, case):
    _check(dtype=torch.float32, device=device, **case)


@pytest.mark.slow
@settings(max_examples=10, **_SETTINGS)
@given(case=_cases(max_n=150))
def test_random_shapes_fp16(device, case):
    _check(dtype=torch.float16, device=device, **case)


# ------------------------------------------------------------------------------------------------
# The launchers: every output element written (NaN-poisoned buffers), the CUDA tile configs
# ------------------------------------------------------------------------------------------------


def _nan_like(t):
    return torch.full_like(t, float("nan"))


def _launcher_roundtrip(B, H, N, d, dtype, device, config, Nk=None):
    Nk = N if Nk is None else Nk
    q = torch.randn(B, H, N, d, device=device).to(dtype)
    # k, v as non-contiguous views with a padded head dim and batch-major strides
    k = torch.randn(B, Nk, H, d + 3, device=device).to(dtype)[..., :d].transpose(1, 2)
    v = torch.randn(H, B, Nk, d, device=device).to(dtype).transpose(0, 1)
    scale = d ** -0.5
    out = torch.full((B, H, N, d), float("nan"), device=device, dtype=dtype)
    lse = torch.full((B, H, N), float("nan"), device=device)
    rows, cols = (min(1, N), min(17, N)), (0, Nk)
    term = torch.full((B, H, score_slots(rows[1] - rows[0]), Nk), float("nan"), device=device)
    out, lse, _ = attention_forward(q, k, v, scale, rows, cols, 0.5, out=out, lse=lse, term=term, config=config)

    dout = torch.randn(B, H, N, d, device=device).to(dtype)

    def torch_run(inputs_dtype):
        """PyTorch's out, per-head score terms, log2-domain lse and gradients with inputs in `inputs_dtype`."""
        q_r, k_r, v_r = (t.detach().to(inputs_dtype).requires_grad_() for t in (q, k, v))
        out_r, score_r = head_terms(reference, q_r, k_r, v_r, rows, cols, scale, 0.5)
        lse_r = torch.logsumexp((q_r @ k_r.transpose(-2, -1)) * scale, dim=-1) * LOG2E
        grads_r = torch.autograd.grad(out_r, (q_r, k_r, v_r), dout.to(inputs_dtype))
        return out_r, score_r, lse_r, grads_r

    exact, theirs = torch_run(torch.float64), torch_run(dtype)
    # the kernel's logits, probabilities, lse and score are float32 whatever the input dtype
    theirs32 = theirs if dtype == torch.float32 else torch_run(torch.float32)
    exact_score = exact_head_terms(q, k, rows, cols, scale, 0.5)
    assert_as_accurate_as_torch(out, exact[0], theirs[0], "out")
    assert_as_accurate_as_torch(lse, exact[2], theirs32[2], "lse (log2 domain)")
    assert_as_accurate_as_torch(term.sum(dim=2), exact_score, theirs32[1], "score term per head",
                                reorder=_score_reorder_bound(rows, exact_score))

    grads = [_nan_like(q), _nan_like(k), _nan_like(v)]
    dq, dk, dv = attention_backward(dout, q, k, v, out, lse, scale, dq=grads[0], dk=grads[1], dv=grads[2],
                                    config=config)
    # dq vanishes on a row with one key while its terms do not: floors scale with the largest gradient
    grad_magnitude = max(max_abs(g) for g in exact[3])
    for name, ours, want, torch_grad in zip(("dq", "dk", "dv"), (dq, dk, dv), exact[3], theirs[3]):
        assert_as_accurate_as_torch(ours, want, torch_grad, name, magnitude=grad_magnitude)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_launchers_with_cuda_configs(device, d, dtype):
    """The tile sizes the GPU uses (fwd/dkdv/dq each), on a ragged N that spans several tiles."""
    _launcher_roundtrip(1, 2, 70, d, dtype, device, attention_config(d, dtype))


@pytest.mark.parametrize(
    "fwd,dkdv,dq",
    [
        ((16, 64), (64, 16), (16, 32)),
        ((64, 16), (16, 64), (32, 16)),
        ((128, 32), (32, 128), (128, 16)),
    ],
)
def test_launchers_with_uneven_tiles(device, fwd, dkdv, dq):
    cfg = AttentionConfig(KernelLaunch(*fwd), KernelLaunch(*dkdv), KernelLaunch(*dq), block_d=32)
    _launcher_roundtrip(2, 1, 97, 32, torch.float32, device, cfg)
    _launcher_roundtrip(1, 1, 5, 32, torch.float32, device, cfg, Nk=150)


# ------------------------------------------------------------------------------------------------
# Layout, autograd details, validation
# ------------------------------------------------------------------------------------------------


def test_output_is_token_major(device):
    """out.transpose(1, 2).reshape(B, N, H * d) is a view: no copy for the projection that follows."""
    B, H, N, d = 2, 3, 20, 16
    _, (q, k, v) = _qkv(B, H, N, d, torch.float32, device, requires_grad=False)
    out = attention(q, k, v)
    assert out.shape == (B, H, N, d)
    merged = out.transpose(1, 2).reshape(B, N, H * d)
    assert merged.data_ptr() == out.data_ptr() and out.transpose(1, 2).is_contiguous()


def test_broadcast_grad_and_no_grad(device):
    """A stride-0 upstream gradient (out.sum()) and inference under no_grad."""
    B, H, N, d = 1, 2, 33, 32
    x, (q, k, v) = _qkv(B, H, N, d, torch.float32, device)
    attention(q, k, v).sum().backward()
    grads = {}
    for dtype in (torch.float32, torch.float64):
        x_ref = x.detach().to(dtype).requires_grad_()
        reference.attention(*_views(x_ref, B, H, N, d)).sum().backward()
        grads[dtype] = x_ref.grad
    assert_as_accurate_as_torch(x.grad, grads[torch.float64], grads[torch.float32], "d(qkv)")
    with torch.no_grad():
        out = attention(q, k, v)
        exact = reference.attention(q.double(), k.double(), v.double())
        assert out.grad_fn is None
        assert_as_accurate_as_torch(out, exact, reference.attention(q, k, v), "out")


def test_backend_switch_gives_this_kernel(device):
    import kernels

    ops = kernels.ops_for("triton", device)
    assert ops.attention is attention
    assert kernels.attention is attention


def test_gradcheck_small(device):
    """Our fp32 gradient against float64 autograd through the reference, at most twice PyTorch's own
    fp32 error."""
    B, H, N, d = 1, 1, 5, 16
    q, k, v = (torch.randn(B, H, N, d, device=device, requires_grad=True) for _ in range(3))
    out = attention(q, k, v)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    exact = torch.autograd.grad(reference.attention(q64, k64, v64), (q64, k64, v64), g.double())
    theirs = torch.autograd.grad(reference.attention(q, k, v), (q, k, v), g)
    for name, a, b, c in zip(("dq", "dk", "dv"), (dq, dk, dv), exact, theirs):
        assert_as_accurate_as_torch(a, b, c, name)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(score_rows=(3, 40)), "score_rows"),
        (dict(score_rows=(3,)), "score_rows"),
        (dict(score_cols=(-1, 10)), "score_cols"),
        (dict(score_rows=(5, 2)), "score_rows"),
    ],
)
def test_score_argument_errors(device, kwargs, match):
    B, H, N, d = 2, 2, 20, 16
    _, (q, k, v) = _qkv(B, H, N, d, torch.float32, device, requires_grad=False)
    with pytest.raises(ValueError, match=match):
        attention_with_score(q, k, v, kwargs.get("score_rows"), kwargs.get("score_cols"))


def test_qkv_argument_errors(device):
    q = torch.randn(1, 2, 8, 16, device=device)
    with pytest.raises(ValueError, match="must be \\(B, H, N, d\\)"):
        attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="one dtype"):
        attention(q, q.half(), q)
    with pytest.raises(ValueError, match="head dim"):
        attention(q, q[..., :8], q)
    with pytest.raises(ValueError, match="same sequence length"):
        attention(q, q, q[:, :, :4])
    with pytest.raises(ValueError, match="unsupported dtype"):
        attention(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="head dim must be in"):
        big = torch.randn(1, 1, 2, 300, device=device)
        attention(big, big, big)


@pytest.mark.parametrize("with_score", [False, True], ids=["plain", "score"])
def test_no_grad_call_neither_allocates_nor_stores_the_lse(device, with_score):
    """Without gradients no backward follows: the forward gets the per-device placeholder instead of a
    log-sum-exp buffer and must leave it alone (its one element keeps its value), with the same output."""
    from kernels.fused_attention import lse_placeholder

    _, (q, k, v) = _qkv(2, 3, 70, 32, torch.float32, device, requires_grad=False)
    placeholder = lse_placeholder(q)
    placeholder.fill_(123.0)
    out = attention_with_score(q, k, v, (1, 17), (18, 70))[0] if with_score else attention(q, k, v)
    assert placeholder.item() == 123.0
    assert lse_placeholder(q) is placeholder
    q64, k64, v64 = (t.double() for t in (q, k, v))
    assert_as_accurate_as_torch(out, reference.attention(q64, k64, v64), reference.attention(q, k, v), "out")


def test_empty_batch(device):
    q = torch.randn(0, 2, 8, 16, device=device, requires_grad=True)
    out, term = attention_with_score(q, q, q)
    assert out.shape == (0, 2, 8, 16) and term.shape == (0, 2, score_slots(8), 8)
    out.sum().backward()
    assert q.grad.shape == q.shape

# Lengths where the tile choice changes (kernels.fused_attention.attention_config): tiny, the coarse
# stage (66, 126), the fine stage (137, 287 with the fixed budget).
MODEL_LENGTHS = (1, 17, 66, 126, 137, 287)


@pytest.mark.parametrize("n", MODEL_LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [32, 64])
def test_fused_tiles_for_length(device, d, dtype, n):
    """The configuration for n keys, on n itself and on a ragged shorter length, and on length 1."""
    cfg = attention_config(d, dtype, interpreter=False, seq_len=n)
    for length in sorted({n, max(1, n - 7), 1}):
        _launcher_roundtrip(1, 1, length, d, dtype, device, cfg)
