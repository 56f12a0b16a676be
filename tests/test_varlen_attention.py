"""The Triton variable-length (packed, cu_seqlens) attention against `kernels.reference.varlen_attention`.

On CPU the kernels run under the Triton interpreter (tests/conftest.py), so the shapes stay
modest; on a GPU the same tests run compiled. Every dtype is judged by FlashAttention's criterion
(tests/helpers.py): against the float64 reference on the same inputs, the kernel may err at most
twice as much as PyTorch in the kernel's dtype. bf16 runs only on CUDA (the interpreter has none).
q, k, v are always strided views of one fused (T, 3 H d) projection, as the model makes them.
The AOT (sm_80 / sm_90, no spills) check of these kernels is in tests/test_aot.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import reference
from kernels.fused_attention import (
    LOG2E,
    AttentionConfig,
    KernelLaunch,
    attention,
    attention_config,
)
from kernels.varlen_fused_attention import (
    varlen_attention,
    varlen_attention_backward,
    varlen_attention_forward,
)

from helpers import assert_as_accurate_as_torch, lse_recompute_bound, max_abs

CUDA = torch.cuda.is_available()


def _cu_seqlens(lengths, device):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def _views(x, H, d):
    """q, k, v as the model makes them: `qkv(x).reshape(T, 3, H, d).unbind(1)`."""
    return x.reshape(x.shape[0], 3, H, d).unbind(1)


def _packed(lengths, H, d, dtype, device, requires_grad=True):
    T = sum(lengths)
    x = torch.randn(T, 3 * H * d, device=device).to(dtype).requires_grad_(requires_grad)
    return x, _views(x, H, d), _cu_seqlens(lengths, device)


def _per_sequence_sdpa(q, k, v, cu, scale=None):
    """The second oracle: torch SDPA on each sequence separately."""
    out = torch.zeros_like(q)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            seq = [t[a:b].transpose(0, 1) for t in (q, k, v)]
            out[a:b] = F.scaled_dot_product_attention(*seq, scale=scale).transpose(0, 1)
    return out


def _check(lengths, H, d, dtype, device, max_seqlen=None, scale=None, backward=True, sdpa=False, seed=None):
    """Ours, the exact (float64) reference and PyTorch's own reference in `dtype` on the same inputs
    (drawn after torch.manual_seed(seed) when given): out and d(qkv) of ours may err at most twice as
    much as PyTorch's (FlashAttention's criterion, tests/helpers.py); with `sdpa`, the exact result is
    also per-sequence SDPA (a second oracle)."""
    if seed is not None:
        torch.manual_seed(seed)
    max_seqlen = max(lengths, default=0) if max_seqlen is None else max_seqlen
    x, _, cu = _packed(lengths, H, d, dtype, device)
    grad = torch.randn(x.shape[0], H, d, device=device)

    def run(op, inputs_dtype):
        x_ = x.detach().to(inputs_dtype).requires_grad_()
        out = op(*_views(x_, H, d), cu, max_seqlen, scale=scale)
        return out, (torch.autograd.grad(out, x_, grad.to(inputs_dtype))[0] if backward and out.numel() else None)

    ours = run(varlen_attention, dtype)
    assert ours[0].shape == (x.shape[0], H, d) and ours[0].dtype == dtype and ours[0].is_contiguous()
    theirs = run(reference.varlen_attention, dtype)
    oracles = [run(reference.varlen_attention, torch.float64)]
    if sdpa:
        oracles.append(run(lambda q, k, v, cu, _, scale: _per_sequence_sdpa(q, k, v, cu, scale), torch.float64))
    # every token pair's logit bounds those within a sequence; T keys bound each sequence's count
    q, k, _ = (t.detach().double().transpose(0, 1) for t in _views(x, H, d))
    logits = q @ k.transpose(-2, -1) * (d ** -0.5 if scale is None else scale)
    for name, exact in zip(("reference", "SDPA"), oracles):
        assert_as_accurate_as_torch(ours[0], exact[0], theirs[0], f"out vs {name}")
        if ours[1] is not None:
            assert_as_accurate_as_torch(ours[1], exact[1], theirs[1], f"d(qkv) vs {name}",
                                        recompute=lse_recompute_bound(logits, max_abs(exact[1])))


# ------------------------------------------------------------------------------------------------
# Forward + backward against the references (fp32, tight)
# ------------------------------------------------------------------------------------------------

RAGGED_FP32 = [
    # lengths, H, d
    ([1, 5, 70, 130, 17], 3, 16),     # length 1, lengths across 1-3 interpreter tiles
    ([1, 1, 1], 2, 32),               # only length-1 sequences
    ([63, 64, 65, 1, 2], 2, 32),      # around the tile size
    ([33, 100, 7], 1, 64),
    ([40, 1, 90], 2, 128),
    ([125], 12, 32),                  # a single sequence (R = 1)
    ([7, 0, 12, 0], 2, 16),           # empty sequences in the middle and at the end
    ([0, 0, 9], 1, 32),
]


@pytest.mark.parametrize("lengths,H,d", RAGGED_FP32)
def test_fp32_ragged(device, lengths, H, d):
    _check(lengths, H, d, torch.float32, device, sdpa=True)


# The fine stage: L = 17 + N_c + 3 k, N_c = 48 (256x192) or 108 (384x288), 0 <= k <= N_c.
MODEL_LENGTHS = [
    ([17 + 48 + 3 * k for k in (0, 19, 48)], 6, 32),       # 65, 122, 209
    ([17 + 108 + 3 * k for k in (0, 33, 72)], 2, 64),      # 125, 224, 341
    pytest.param([17 + 48 + 3 * k for k in (5, 1, 30, 0)], 12, 32, marks=pytest.mark.slow),  # Small: H = 12, d = 32
    ([17 + 108 + 3 * k for k in (108, 0)], 1, 32),         # 449 (every patch refined), 125
]


@pytest.mark.parametrize("lengths,H,d", MODEL_LENGTHS)
def test_fp32_model_lengths(device, lengths, H, d):
    _check(lengths, H, d, torch.float32, device)


def test_fp32_model_bound_above_longest(device):
    """max_seqlen is the static bound K + N_c + 3 k_max, well above this batch's longest sequence."""
    _check([125, 128, 131], 2, 32, torch.float32, device, max_seqlen=17 + 108 + 3 * 108)


def test_fp32_equal_lengths_match_the_fused_kernel(device):
    """Equal lengths: the packed layout is the padded (B, N) one, so the batched fused kernel applies."""
    B, N, H, d = 3, 66, 2, 32
    x, (q, k, v), cu = _packed([N] * B, H, d, torch.float32, device)
    out = varlen_attention(q, k, v, cu, N)
    xb = x.detach().clone().requires_grad_()
    qkv = xb.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    out_b = attention(qkv[0], qkv[1], qkv[2])
    grad = torch.randn(B, N, H, d, device=device)
    out.backward(grad.reshape(B * N, H, d))
    out_b.backward(grad.transpose(1, 2))
    # each kernel within FlashAttention's criterion of the exact result, so they differ by at most
    # the sum of the two bounds
    exact, theirs = [], []
    for dtype in (torch.float64, torch.float32):
        x_ = x.detach().to(dtype).requires_grad_()
        out_ = reference.varlen_attention(*_views(x_, H, d), cu, N)
        out_.backward(grad.reshape(B * N, H, d).to(dtype))
        (exact if dtype == torch.float64 else theirs).extend((out_, x_.grad))
    assert_as_accurate_as_torch(out, exact[0], theirs[0], "varlen out")
    assert_as_accurate_as_torch(out_b.transpose(1, 2).reshape(B * N, H, d), exact[0], theirs[0], "batched out")
    assert_as_accurate_as_torch(x.grad, exact[1], theirs[1], "varlen d(qkv)")
    assert_as_accurate_as_torch(xb.grad, exact[1], theirs[1], "batched d(qkv)")


@pytest.mark.parametrize("d", [8, 24, 80])
def test_fp32_head_dims_not_power_of_two(device, d):
    _check([3, 50, 20], 2, d, torch.float32, device)


def test_fp32_custom_scale(device):
    _check([10, 70], 2, 32, torch.float32, device, scale=0.31, sdpa=True)


def test_empty_batch(device):
    """R = 0: cu_seqlens = [0], T = 0; forward and backward give empty tensors."""
    x, (q, k, v), cu = _packed([], 2, 16, torch.float32, device)
    out = varlen_attention(q, k, v, cu, 0)
    assert out.shape == (0, 2, 16)
    out.sum().backward()
    assert x.grad.shape == x.shape
    out = varlen_attention(q, k, v, cu, 50)  # a bound but no sequence
    assert out.shape == (0, 2, 16)


def test_only_empty_sequences(device):
    x, (q, k, v), cu = _packed([0, 0], 2, 16, torch.float32, device)
    out = varlen_attention(q, k, v, cu, 8)
    assert out.shape == (0, 2, 16)
    out.sum().backward()
    assert x.grad.shape == x.shape


# ------------------------------------------------------------------------------------------------
# Half precision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths,H,d",
    [([1, 17, 66], 2, 16), ([65, 122, 3], 3, 32), ([125, 224], 1, 64), ([1, 70], 1, 128), pytest.param([209, 65], 12, 32, marks=pytest.mark.slow)],
)
def test_fp16(device, lengths, H, d):
    _check(lengths, H, d, torch.float16, device, max_seqlen=max(lengths) + 5)


@pytest.mark.gpu(reason="bf16 needs CUDA: the Triton interpreter has no bfloat16")
@pytest.mark.parametrize(
    "lengths,H,d",
    [([65, 122, 209, 1], 12, 32), ([125, 224, 341, 449], 12, 64), ([1, 2, 3], 2, 128), ([300] * 8, 12, 32)],
)
def test_bf16(device, lengths, H, d):
    _check(lengths, H, d, torch.bfloat16, device, max_seqlen=17 + 108 + 3 * 108, sdpa=True)


@pytest.mark.gpu(reason="the model's batch sizes are only fast enough compiled")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_model_batch_sizes_on_gpu(device, dtype):
    gen = torch.Generator().manual_seed(1)
    for n_c, H, d in ((48, 12, 32), (108, 12, 64)):
        k = torch.randint(0, n_c + 1, (64,), generator=gen)
        _check((17 + n_c + 3 * k).tolist(), H, d, dtype, device, max_seqlen=17 + 4 * n_c)


# ------------------------------------------------------------------------------------------------
# Random length lists
# ------------------------------------------------------------------------------------------------


@st.composite
def _cases(draw, max_len=150):
    lengths = draw(st.lists(st.integers(0, max_len), min_size=0, max_size=4))
    return dict(
        lengths=lengths,
        H=draw(st.integers(1, 3)),
        d=draw(st.sampled_from([16, 32, 64, 128])),
        max_seqlen=max(lengths, default=0) + draw(st.integers(0, 70)),
        seed=draw(st.integers(0, 2**31 - 1)),  # the tensors: each example replays exactly
    )


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.slow
@settings(max_examples=12, **_SETTINGS)
@given(case=_cases())
def test_random_lengths_fp32(device, case):
    _check(dtype=torch.float32, device=device, **case)


@pytest.mark.slow
@settings(max_examples=6, **_SETTINGS)
@given(case=_cases(max_len=100))
def test_random_lengths_fp16(device, case):
    _check(dtype=torch.float16, device=device, **case)


# ------------------------------------------------------------------------------------------------
# The launchers: every output element written (NaN-poisoned buffers), nothing read outside the
# sequences (NaN rows after them), the CUDA tile configurations
# ------------------------------------------------------------------------------------------------


def _nan(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _launcher_roundtrip(lengths, H, d, dtype, device, config, max_seqlen=None):
    T = sum(lengths)
    max_seqlen = max(lengths) if max_seqlen is None else max_seqlen
    cu = _cu_seqlens(lengths, device)
    pad = 70  # NaN rows after the last sequence: an unmasked read past its end shows up as NaN
    qkv = _nan((T + pad, 3, H, d), dtype, device)
    qkv[:T] = torch.randn(T, 3, H, d, device=device).to(dtype)
    q, k, v = qkv[:T].unbind(1)
    # v as a head-major view instead (other strides than q and k)
    v = v.transpose(0, 1).contiguous().transpose(0, 1)
    scale = d ** -0.5
    out = _nan((T, H, d), dtype, device)
    lse = _nan((H, T), torch.float32, device)
    out, lse = varlen_attention_forward(q, k, v, cu, max_seqlen, scale, out=out, lse=lse, config=config)

    dout_buf = _nan((T + pad, H, d), dtype, device)
    dout_buf[:T] = torch.randn(T, H, d, device=device).to(dtype)
    dout = dout_buf[:T]

    def torch_run(inputs_dtype):
        """PyTorch's out, log2-domain lse and gradients with inputs in `inputs_dtype`."""
        q_r, k_r, v_r = (t.detach().to(inputs_dtype).requires_grad_() for t in (q, k, v))
        out_r = reference.varlen_attention(q_r, k_r, v_r, cu, max_seqlen, scale=scale)
        lse_r = torch.cat([
            torch.logsumexp(torch.einsum("thd,shd->hts", q_r[a:b], k_r[a:b]) * scale, dim=-1)
            for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())
        ], dim=1) * LOG2E
        return out_r, lse_r, torch.autograd.grad(out_r, (q_r, k_r, v_r), dout.to(inputs_dtype))

    exact, theirs = torch_run(torch.float64), torch_run(dtype)
    theirs32 = theirs if dtype == torch.float32 else torch_run(torch.float32)  # the kernel's lse is float32
    assert_as_accurate_as_torch(out, exact[0], theirs[0], "out")
    assert_as_accurate_as_torch(lse, exact[1], theirs32[1], "lse (log2 domain)")

    grads = [_nan((T, H, d), dtype, device) for _ in range(3)]
    dq, dk, dv = varlen_attention_backward(dout, q, k, v, out, lse, cu, max_seqlen, scale,
                                           dq=grads[0], dk=grads[1], dv=grads[2], config=config)
    # dq vanishes on a sequence of one token while its terms do not: floors scale with the largest gradient
    grad_magnitude = max(max_abs(g) for g in exact[2])
    for name, ours, want, torch_grad in zip(("dq", "dk", "dv"), (dq, dk, dv), exact[2], theirs[2]):
        assert_as_accurate_as_torch(ours, want, torch_grad, name, magnitude=grad_magnitude)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_launchers_with_cuda_configs(device, d, dtype):
    """The tile sizes the GPU uses (fwd / dkdv / dq each) on ragged lengths, poisoned buffers."""
    _launcher_roundtrip([1, 37, 70], 2, d, dtype, device, attention_config(d, dtype), max_seqlen=90)


@pytest.mark.parametrize(
    "fwd,dkdv,dq",
    [
        ((16, 64), (64, 16), (16, 32)),
        ((64, 16), (16, 64), (32, 16)),
        ((128, 32), (32, 128), (128, 16)),
    ],
)
def test_launchers_with_uneven_tiles(device, fwd, dkdv, dq):
    cfg = AttentionConfig(KernelLaunch(*fwd), KernelLaunch(*dkdv), KernelLaunch(*dq), block_d=32,
                          delta=KernelLaunch(16, 0, 4, 1))
    _launcher_roundtrip([97, 1, 20, 0, 5], 1, 32, torch.float32, device, cfg, max_seqlen=130)


def test_interpreter_tiles_poisoned(device):
    """The default (interpreter or CUDA) configuration, model-like lengths, every element written."""
    _launcher_roundtrip([125, 65, 1, 209], 2, 32, torch.float32, device, None, max_seqlen=17 + 4 * 48)


# ------------------------------------------------------------------------------------------------
# Layout, autograd details, the model's call, validation
# ------------------------------------------------------------------------------------------------


def test_output_reshape_is_free_and_inputs_are_not_copied(device):
    """out.reshape(T, H * d) is a view; the strided q, k, v views are read in place."""
    lengths, H, d = [5, 20, 9], 3, 16
    _, (q, k, v), cu = _packed(lengths, H, d, torch.float32, device, requires_grad=False)
    assert not q.is_contiguous()
    out = varlen_attention(q, k, v, cu, 20)
    assert out.shape == (34, H, d)
    merged = out.reshape(34, H * d)
    assert merged.data_ptr() == out.data_ptr() and merged._base is out


def test_model_attention_layer(device):
    """`sharpose.models.layers.Attention` on packed sequences: the triton backend within FlashAttention's
    criterion of the reference backend in float64 (the projections around the op are the same code)."""
    from sharpose.models.layers import Attention, PackedSequences

    lengths, C, H = [65, 1, 80], 64, 4
    T = sum(lengths)
    cu = _cu_seqlens(lengths, device)
    seq_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    packed = PackedSequences(cu, 17 + 4 * 48, seq_of_token)
    layer = Attention(C, H, backend="triton").to(device)
    ref_layer = Attention(C, H, backend="reference").to(device)
    ref_layer.load_state_dict(layer.state_dict())
    x = torch.randn(T, C, device=device)
    results = []
    for module, dtype in ((layer, torch.float32), (ref_layer, torch.float64), (ref_layer, torch.float32)):
        x_ = x.detach().clone().to(dtype).requires_grad_()
        out = module.to(dtype)(x_, packed)
        out.square().sum().backward()
        results.append((out, x_.grad))
    (out, grad), (exact, exact_grad), (theirs, theirs_grad) = results
    assert_as_accurate_as_torch(out, exact, theirs, "layer out")
    assert_as_accurate_as_torch(grad, exact_grad, theirs_grad, "layer d(x)")


def test_broadcast_grad_no_grad_and_determinism(device):
    """A stride-0 upstream gradient (out.sum()), bitwise-repeatable backward, inference under no_grad."""
    lengths, H, d = [33, 1, 60], 2, 32
    x, (q, k, v), cu = _packed(lengths, H, d, torch.float32, device)
    varlen_attention(q, k, v, cu, 64).sum().backward()
    first = x.grad.clone()
    x.grad = None
    varlen_attention(q, k, v, cu, 64).sum().backward()
    assert torch.equal(x.grad, first), "the backward is not deterministic"
    grads = {}
    for dtype in (torch.float32, torch.float64):
        x_ref = x.detach().to(dtype).requires_grad_()
        reference.varlen_attention(*_views(x_ref, H, d), cu, 64).sum().backward()
        grads[dtype] = x_ref.grad
    assert_as_accurate_as_torch(first, grads[torch.float64], grads[torch.float32], "d(qkv)")
    with torch.no_grad():
        out = varlen_attention(q, k, v, cu, 64)
    assert out.grad_fn is None


def test_backend_switch_gives_this_kernel(device):
    import kernels

    ops = kernels.ops_for("triton", device)
    assert ops.varlen_attention is varlen_attention
    assert kernels.varlen_attention is varlen_attention
    assert kernels.reference.varlen_attention is reference.varlen_attention


def test_gradcheck_small(device):
    """Our fp32 gradient against float64 autograd through the reference, at most twice PyTorch's own
    fp32 error."""
    T, H, d = 9, 1, 16
    cu = _cu_seqlens([4, 1, 4], device)
    q, k, v = (torch.randn(T, H, d, device=device, requires_grad=True) for _ in range(3))
    out = varlen_attention(q, k, v, cu, 4)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), g)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    exact = torch.autograd.grad(reference.varlen_attention(q64, k64, v64, cu, 4), (q64, k64, v64), g.double())
    theirs = torch.autograd.grad(reference.varlen_attention(q, k, v, cu, 4), (q, k, v), g)
    for name, a, b, c in zip(("dq", "dk", "dv"), ours, exact, theirs):
        assert_as_accurate_as_torch(a, b, c, name)


def test_argument_errors(device):
    T, H, d = 10, 2, 16
    x = torch.randn(T, 3, H, d, device=device)
    q, k, v = x.unbind(1)
    cu = _cu_seqlens([4, 6], device)
    with pytest.raises(ValueError, match=r"packed \(T, H, d\)"):
        varlen_attention(q[None], k[None], v[None], cu, 6)
    with pytest.raises(ValueError, match="one shape"):
        varlen_attention(q, k[:, :1], v, cu, 6)
    with pytest.raises(ValueError, match="one shape"):
        varlen_attention(q, k[:9], v, cu, 6)
    with pytest.raises(ValueError, match="one dtype"):
        varlen_attention(q, k.half(), v, cu, 6)
    with pytest.raises(ValueError, match="unsupported dtype"):
        varlen_attention(q.double(), k.double(), v.double(), cu, 6)
    with pytest.raises(ValueError, match="head dim must be in"):
        big = torch.randn(T, 1, 300, device=device)
        varlen_attention(big, big, big, cu, 6)
    with pytest.raises(ValueError, match="int32"):
        varlen_attention(q, k, v, cu.long(), 6)
    with pytest.raises(ValueError, match="1-D"):
        varlen_attention(q, k, v, cu[None], 6)
    with pytest.raises(ValueError, match="1-D"):
        varlen_attention(q, k, v, cu[:0], 6)
    with pytest.raises(TypeError, match="python int"):
        varlen_attention(q, k, v, cu, torch.tensor(6))
    with pytest.raises(TypeError, match="python int"):
        varlen_attention(q, k, v, cu, 6.0)
    with pytest.raises(TypeError, match="python int"):
        varlen_attention(q, k, v, cu, True)
    with pytest.raises(ValueError, match=">= 0"):
        varlen_attention(q, k, v, cu, -1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        varlen_attention(q, k, v, [0, 4, 10], 6)
    if CUDA:
        with pytest.raises(ValueError, match="cu_seqlens must be on"):
            varlen_attention(q, k, v, cu.cpu(), 6)
        with pytest.raises(ValueError, match="one device"):
            varlen_attention(q, k.cpu(), v, cu, 6)


@pytest.mark.skipif(CUDA, reason="the values of cu_seqlens are checked only where reading them is free (CPU)")
def test_cu_seqlens_value_errors(device):
    T, H, d = 10, 2, 16
    q, k, v = torch.randn(T, 3, H, d).unbind(1)
    with pytest.raises(ValueError, match="exceeds max_seqlen"):
        varlen_attention(q, k, v, _cu_seqlens([4, 6], "cpu"), 5)
    with pytest.raises(ValueError, match=r"cu_seqlens\[0\] must be 0"):
        varlen_attention(q, k, v, torch.tensor([1, 4, 10], dtype=torch.int32), 6)
    with pytest.raises(ValueError, match="non-decreasing"):
        varlen_attention(q, k, v, torch.tensor([0, 6, 4, 10], dtype=torch.int32), 6)
    with pytest.raises(ValueError, match="T = 10"):
        varlen_attention(q, k, v, _cu_seqlens([4, 5], "cpu"), 6)


@pytest.mark.parametrize("max_seqlen", (66, 126, 137, 287))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_varlen_tiles_for_length(device, dtype, max_seqlen):
    """Packed sequences of ragged lengths (1, empty, the bound itself) with the bound's tiles."""
    cfg = attention_config(32, dtype, interpreter=False, seq_len=max_seqlen)
    _launcher_roundtrip([max_seqlen - 3, 1, 0, max_seqlen, 17], 1, 32, dtype, device, cfg, max_seqlen=max_seqlen)
