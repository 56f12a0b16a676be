"""What only a CUDA device can show: bf16 and autocast on the Triton backend, CUDA graphs and the
capturable forward, bitwise determinism, kernel recompilation, the device guard, the throughput
benchmark's GPU path. Every test is skipped (with its reason) without a GPU; bench/gpu_suite.sh
runs them on a lent GPU machine.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_as_accurate_as_torch, assert_rel_close, network_rel_tolerance
from sharpose import create_model

pytestmark = pytest.mark.gpu(reason="needs a CUDA device (compiled Triton kernels)")

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.device("cuda")
SMALL = dict(depth=2, embed_dim=64, num_heads=2, drop_path_rate=0.0)
# two float32 evaluations in other summation orders: the longest reduction is the patch
# embedding's 3 * 16 * 16 terms
FP32_REL = network_rel_tolerance(3 * 16 * 16)


def model_pair(**overrides):
    """The same weights on the reference and the Triton backend, on the GPU, in eval mode."""
    torch.manual_seed(5)
    reference = create_model("sharpose_small_256x192", backend="reference", **SMALL, **overrides).eval()
    triton = create_model("sharpose_small_256x192", backend="triton", **SMALL, **overrides).eval()
    triton.load_state_dict(reference.state_dict())
    return reference.to(CUDA), triton.to(CUDA)


def exit_two_of_four(model, images) -> float:
    """A threshold between the 2nd and 3rd quality of the batch: two samples exit, far from a tie."""
    model.qp_threshold = math.inf
    with torch.no_grad():
        quality = model(images).quality.float().sort().values
    return (quality[1] + quality[2]).item() / 2


@pytest.mark.parametrize("token_budget", ["fixed", "adaptive"])
def test_bf16_model_on_triton_matches_reference(token_budget):
    """bf16 weights and inputs: against the fp32 model, heatmaps, quality and patch scores of the
    Triton backend err at most twice as much as the reference backend's in bf16."""
    reference, triton = model_pair(token_budget=token_budget)
    images = torch.randn(4, 3, 256, 192, device=CUDA)
    threshold = exit_two_of_four(reference, images)
    with torch.no_grad():
        reference.qp_threshold = triton.qp_threshold = threshold
        exact = reference(images)
        theirs = reference.to(torch.bfloat16)(images.bfloat16())
        ours = triton.to(torch.bfloat16)(images.bfloat16())
    assert ours.heatmaps.dtype == torch.bfloat16 and int(ours.refined.sum()) == 2
    assert torch.equal(ours.refined, theirs.refined) and torch.equal(ours.selected, theirs.selected)
    for field in ("heatmaps", "coarse_heatmaps", "quality", "patch_scores"):
        assert_as_accurate_as_torch(getattr(ours, field), getattr(exact, field), getattr(theirs, field), field)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_triton_matches_reference(dtype):
    """fp32 weights under torch.autocast: the Triton ops take what autocast hands them; forward and
    the weight gradients as accurate as the reference backend's under the same autocast."""
    reference, triton = model_pair()
    images = torch.randn(2, 3, 256, 192, device=CUDA)
    results = {}
    for name, model, autocast in (("exact", reference, False), ("theirs", reference, True), ("ours", triton, True)):
        model.train().zero_grad()
        model.qp_threshold = math.inf
        with torch.autocast("cuda", dtype=dtype, enabled=autocast):
            out = model(images)
            loss = out.heatmaps.float().square().mean() + out.quality.float().square().mean()
        loss.backward()
        results[name] = (out, {n: p.grad.clone() for n, p in model.named_parameters()})
    (exact, exact_grads), (theirs, theirs_grads), (ours, ours_grads) = (results[k] for k in ("exact", "theirs", "ours"))
    for field in ("heatmaps", "quality", "patch_scores"):
        assert_as_accurate_as_torch(getattr(ours, field).float(), getattr(exact, field).float(),
                                    getattr(theirs, field).float(), field)
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "fine_pos_embed"):
        assert_as_accurate_as_torch(ours_grads[name], exact_grads[name], theirs_grads[name], f"d({name})")


def capturable_model():
    _, triton = model_pair()
    triton.qp_threshold = math.inf  # every sample refines: no host read of the batch split
    assert triton.capturable
    return triton


def test_capturable_forward_makes_no_host_sync(monkeypatch):
    """`model.capturable` promises no host-device sync; CUDA's sync debug mode turns one into an error.
    The input check is off as while capturing (it reads one flag back)."""
    model = capturable_model()
    images = torch.randn(4, 3, 256, 192, device=CUDA)
    with torch.no_grad():
        model(images)  # warm up: compile the kernels outside the checked region
        monkeypatch.setattr("sharpose.models.sharpose.is_tracing", lambda: True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(images)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # the mode does catch a sync, so the check can fail
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            images.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_replay_equals_eager():
    """The capturable forward recorded once in a CUDA graph, replayed on new inputs: the same
    selection, heatmaps as eager up to the summation order of the score's atomics."""
    model = capturable_model()
    static = torch.randn(4, 3, 256, 192, device=CUDA)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                model(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(static)
        for seed in (1, 2):
            images = torch.randn(4, 3, 256, 192, device=CUDA, generator=torch.Generator(device=CUDA).manual_seed(seed))
            static.copy_(images)
            graph.replay()
            eager = model(images)
            assert torch.equal(captured.selected, eager.selected)
            for field in ("heatmaps", "coarse_heatmaps", "quality", "patch_scores"):
                assert_rel_close(getattr(captured, field), getattr(eager, field), FP32_REL, field)


# ------------------------------------------------------------------------------------------------
# Bitwise determinism: two runs on the same inputs give the same bits
# ------------------------------------------------------------------------------------------------


def twice(fn):
    first, second = fn(), fn()
    torch.cuda.synchronize()
    return first, second


def assert_bitwise_equal(first, second, what):
    for i, (a, b) in enumerate(zip(first, second)):
        if a is None:
            continue
        assert torch.equal(a, b), f"{what}[{i}] differs between two runs (max {(a - b).abs().max().item():.3g})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_attention_score_and_backward_are_deterministic(dtype):
    from kernels import attention_with_score

    x = torch.randn(8, 126, 3 * 12 * 32, device=CUDA).to(dtype)

    def run():
        x_ = x.detach().requires_grad_()
        q, k, v = x_.reshape(8, 126, 3, 12, 32).permute(2, 0, 3, 1, 4)
        out, score = attention_with_score(q, k, v, (1, 17), (18, 126))
        out.backward(torch.ones_like(out))
        return out, score, x_.grad

    assert_bitwise_equal(*twice(run), "fused attention (out, score, d(qkv))")


def test_varlen_attention_backward_is_deterministic():
    from kernels import varlen_attention

    lengths = [65, 122, 209, 1]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=CUDA)
    x = torch.randn(sum(lengths), 3, 12, 32, device=CUDA, dtype=torch.bfloat16)

    def run():
        x_ = x.detach().requires_grad_()
        out = varlen_attention(*x_.unbind(1), cu, 209)
        out.backward(torch.ones_like(out))
        return out, x_.grad

    assert_bitwise_equal(*twice(run), "varlen attention (out, d(qkv))")


def test_composition_gradients_are_deterministic():
    from helpers import GRID_256, TOKEN_INPUTS, call, grads_of, make_inputs

    from kernels import compose_tokens

    args = make_inputs([20, 0, 48, 7] * 4, GRID_256, 384, torch.bfloat16, CUDA)
    grad = torch.randn(int(args["cu_seqlens"][-1]), 384, device=CUDA, dtype=torch.bfloat16)

    def run():
        out, leaves = call(compose_tokens, args, requires_grad=True)
        out.backward(grad)
        return (out, *(grads_of(leaves)[n] for n in TOKEN_INPUTS))

    assert_bitwise_equal(*twice(run), "token composition (out, gradients)")


def test_model_selection_is_deterministic():
    _, model = model_pair(token_budget="adaptive")
    images = torch.randn(8, 3, 256, 192, device=CUDA)
    model.qp_threshold = exit_two_of_four(model, images[:4])

    def run():
        with torch.no_grad():
            out = model(images)
        return out.patch_scores, out.selected, out.refined, out.heatmaps

    assert_bitwise_equal(*twice(run), "model (patch scores, selected, refined, heatmaps)")


# ------------------------------------------------------------------------------------------------
# Recompilation: a kernel compiles once per dtype / head dim, not once per sequence length
# ------------------------------------------------------------------------------------------------


def jit_kernels():
    """Every Triton kernel of the three ops' modules."""
    import triton

    import kernels.fused_attention
    import kernels.token_composition
    import kernels.varlen_fused_attention

    found = {}
    for module in (kernels.fused_attention, kernels.varlen_fused_attention, kernels.token_composition):
        for name, obj in vars(module).items():
            if isinstance(obj, triton.runtime.JITFunction):
                found[f"{module.__name__}.{name}"] = obj
    assert found, "no Triton kernels found"
    return found


def compiled_counts() -> dict[str, int]:
    """How many binaries each kernel holds for the current device (triton's per-device cache)."""
    counts = {}
    device = torch.cuda.current_device()
    for name, fn in jit_kernels().items():
        caches = getattr(fn, "device_caches", None)
        assert caches is not None, f"{name}: this triton keeps no device_caches; update compiled_counts()"
        counts[name] = len(caches[device][0]) if device in caches else 0
    return counts


def run_every_op(n: int) -> None:
    """Forward and backward of the three ops at a model-like size that depends on n."""
    from helpers import GRID_256, call, make_inputs

    from kernels import attention_with_score, compose_tokens, varlen_attention

    x = torch.randn(2, n, 3 * 12 * 32, device=CUDA, dtype=torch.float16, requires_grad=True)
    q, k, v = x.reshape(2, n, 3, 12, 32).permute(2, 0, 3, 1, 4)
    attention_with_score(q, k, v, (1, 17), (18, n))[0].sum().backward()
    lengths = [n, 2 * n + 3, 7]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=CUDA)
    packed = torch.randn(sum(lengths), 3, 12, 32, device=CUDA, dtype=torch.float16, requires_grad=True)
    varlen_attention(*packed.unbind(1), cu, max(lengths) + 5).sum().backward()
    ks = [n % 49, (3 * n) % 49, 0]
    out, _ = call(compose_tokens, make_inputs(ks, GRID_256, 384, torch.float16, CUDA), requires_grad=True)
    out.sum().backward()


def test_no_kernel_recompiles_for_new_sizes():
    """New sequence lengths, token counts and bounds reuse the binaries. The batched attention sees
    the model's lengths, never multiples of 16 (1 + 17 + N_c); the packed total T = 3 n + 10 is one
    for n = 66 (208) and not for the others."""
    run_every_op(66)
    torch.cuda.synchronize()
    before = compiled_counts()
    assert sum(before.values()) > 0, "nothing was compiled"
    for n in (125, 97, 83, 211):
        run_every_op(n)
    torch.cuda.synchronize()
    after = compiled_counts()
    grown = {name: (before[name], after[name]) for name in before if after[name] != before[name]}
    assert not grown, f"kernels compiled again for new sizes (before, after): {grown}"


# ------------------------------------------------------------------------------------------------
# Several devices; the benchmark
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_ops_run_on_the_inputs_device_not_the_current_one():
    """With cuda:0 current, inputs on cuda:1: the kernels launch on cuda:1 and match the reference."""
    from kernels import attention_with_score, reference

    second = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    x = torch.randn(2, 66, 3 * 4 * 32, device=second)
    q, k, v = x.reshape(2, 66, 3, 4, 32).permute(2, 0, 3, 1, 4)
    out, score = attention_with_score(q, k, v, (1, 17), (18, 66))
    theirs, ref_score = reference.attention_with_score(q, k, v, (1, 17), (18, 66))
    exact = reference.attention(q.double(), k.double(), v.double())
    assert out.device == second and torch.cuda.current_device() == 0
    assert_as_accurate_as_torch(out, exact, theirs, "out on cuda:1")
    assert score.device == second
    assert_rel_close(score.sum(dim=(1, 2)), ref_score.sum(dim=(1, 2)), FP32_REL, "score on cuda:1")


def test_throughput_benchmark_gpu_path(tmp_path):
    """bench/throughput.py on the GPU, tiny and short: bf16 eager and CUDA-graph records, both backends."""
    out = tmp_path / "throughput.json"
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--size", "small", "--resolution",
           "256x192", "--dtype", "bf16", "--batch-size", "8", "--exit-rate", "0,0.5", "--warmup", "1", "--iters",
           "2", "--cuda-graphs", "--no-hf", "--no-progress", "--flop-cache", str(tmp_path / "flops.json"),
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["environment"]["device"].startswith("cuda")
    ok = [r for r in result["records"] if r["status"] == "ok"]
    assert {r["backend"] for r in ok} >= {"reference", "triton"}, result["records"]
    assert {r["mode"] for r in ok} >= {"eager"}, result["records"]
    for r in ok:
        assert r["img_per_s"] > 0 and len(r["times_ms"]) == 2
