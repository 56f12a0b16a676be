"""The Triton ops as PyTorch operators (`torch.ops.sharpose.*`): each registration (schema, fake
implementation, autograd formula) passes `torch.library.opcheck`, and eager autograd runs the same
formula without the dispatcher; `torch.export` of SHaRPose on the Triton backend records the ops;
`torch.compile(fullgraph=True)` of the capturable forward equals eager; a compiled training step
gives the reference backend's gradients; reloading a kernel module registers nothing twice.

On the CPU the kernels run under the Triton interpreter (tests/conftest.py) and torch.compile uses
the "aot_eager" backend (AOTAutograd graphs run by eager PyTorch, no code generation)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels.triton_ops  # noqa: F401  (registers the ops)
from kernels import fused_attention, token_composition, varlen_fused_attention
from sharpose import create_model
from sharpose.export import ExportError, export, exportable, run_exported

OPS = torch.ops.sharpose
FP32_EPS = torch.finfo(torch.float32).eps

# The model kept small for the interpreter: 4x3 coarse patches, 17 keypoints, 2 blocks of 2 heads.
SMALL = dict(input_size=(128, 96), depth=2, embed_dim=64, num_heads=2, drop_path_rate=0.0)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str) -> None:
    """max |actual - expected| <= rel * max |expected|: an error relative to the output's magnitude."""
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale, f"{name}: max abs error {err:.3g} > {rel:.3g} * max |expected| {scale:.3g}"


# ----------------------------------------------------------------------------------------------
# Each registration on its own
# ----------------------------------------------------------------------------------------------


def attention_args(device, score: bool):
    q, k, v = (torch.randn(2, 2, 20, 16, device=device, requires_grad=True) for _ in range(3))
    if not score:
        return q, k, v, 0.25
    return q, k, v, 0.25, 1, 5, 8, 18, 0.5


def varlen_args(device):
    lengths = [5, 0, 12]
    T = sum(lengths)
    q, k, v = (torch.randn(T, 2, 16, device=device, requires_grad=True) for _ in range(3))
    cu_seqlens = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)
    return q, k, v, cu_seqlens, max(lengths), 0.25


def compose_args(device):
    """Two samples of a 2x3 coarse grid selecting 2 and 0 patches, 3 keypoints, D = 8."""
    K, (hc, wc), D, ks = 3, (2, 3), 8, [2, 0]
    N_c, S_p = hc * wc, sum(ks)
    tokens = [torch.randn(*shape, device=device, requires_grad=True)
              for shape in ((K, D), (4 * S_p, D), (4 * N_c, D), (S_p, D), (len(ks), N_c, D))]
    order = torch.stack([torch.randperm(N_c) for _ in ks]).to(device)
    lengths = torch.tensor([K + N_c + 3 * k for k in ks])
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)
    return (*tokens, order, cu_seqlens, [hc, wc], int(lengths.max()))


def test_attention_ops_pass_opcheck(device):
    torch.library.opcheck(OPS.attention.default, attention_args(device, score=False))
    torch.library.opcheck(OPS.attention_with_score.default, attention_args(device, score=True))
    q, k, v, scale = attention_args(device, score=False)
    with torch.no_grad():
        out, lse = OPS.attention(q, k, v, scale)
    dout = torch.randn_like(out)
    torch.library.opcheck(OPS.attention_backward.default, (dout, q.detach(), k.detach(), v.detach(), out, lse, scale))


def test_varlen_ops_pass_opcheck(device):
    args = varlen_args(device)
    torch.library.opcheck(OPS.varlen_attention.default, args)
    q, k, v, cu_seqlens, max_seqlen, scale = args
    with torch.no_grad():
        out, lse = OPS.varlen_attention(*args)
    backward_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, cu_seqlens, max_seqlen, scale)
    torch.library.opcheck(OPS.varlen_attention_backward.default, backward_args)


def test_compose_ops_pass_opcheck(device):
    args = compose_args(device)
    torch.library.opcheck(OPS.compose_tokens.default, args)
    with torch.no_grad():
        out = OPS.compose_tokens(*args)
    order, cu_seqlens, grid, max_seqlen = args[5:]
    for needs in ([True] * 5, [False, True, False, False, True]):
        grads = OPS.compose_tokens_backward(torch.randn_like(out), order, cu_seqlens, grid, max_seqlen, 3, needs)
        assert len(grads) == sum(needs)
        torch.library.opcheck(OPS.compose_tokens_backward.default,
                              (torch.randn_like(out), order, cu_seqlens, grid, max_seqlen, 3, needs))


KERNEL_OPS = {
    "attention": (fused_attention._attention_op, lambda device: attention_args(device, score=False)),
    "attention_with_score": (fused_attention._attention_with_score_op, lambda device: attention_args(device, score=True)),
    "varlen_attention": (varlen_fused_attention._varlen_op, varlen_args),
    "compose_tokens": (token_composition._compose_op, compose_args),
}


@pytest.mark.parametrize("name", sorted(KERNEL_OPS))
def test_eager_autograd_runs_the_registered_formula_without_the_dispatcher(device, name):
    """In eager mode a call that needs gradients runs the op's functions as a torch.autograd.Function
    (the dispatcher's autograd costs several times the rest of the call); the registered op, which
    traces record, runs the same functions: the same outputs and gradients, bit for bit."""
    kernel_op, make_args = KERNEL_OPS[name]
    assert kernel_op.registered is getattr(OPS, name).default
    args = make_args(device)
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    results = {}
    for path, call in (("eager", kernel_op), ("registered", kernel_op.registered)):
        output = call(*args)
        output = output[0] if isinstance(output, tuple) else output
        torch.manual_seed(1)
        grads = torch.autograd.grad(output, inputs, torch.randn_like(output))
        results[path] = (output.grad_fn, output.detach(), grads)
    assert type(results["eager"][0]).__name__ == f"{name}_functionBackward"
    assert type(results["registered"][0]).__name__ != f"{name}_functionBackward"
    for eager, registered in zip((results["eager"][1], *results["eager"][2]),
                                 (results["registered"][1], *results["registered"][2])):
        assert torch.equal(eager, registered)


def test_score_term_is_the_same_on_every_call_path(device):
    """The registered op (traces), the eager autograd Function and the direct launch all return the
    same score term, bit for bit (each element stored by one program, in one fixed order)."""
    q, k, v, scale, *ranges, weight = attention_args(device, score=True)
    with torch.no_grad():
        _, _, registered = OPS.attention_with_score(q, k, v, scale, *ranges, weight)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            _, term = kernels.triton_ops.attention_with_score(q, k, v, (1, 5), (8, 18), scale=scale,
                                                              score_weight=weight)
        assert torch.equal(term, registered), f"grad={grad}"


# ----------------------------------------------------------------------------------------------
# The model: export, compile, a compiled training step
# ----------------------------------------------------------------------------------------------


class Outputs(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return out.heatmaps, out.coarse_heatmaps, out.quality, out.patch_scores, out.selected


def small_model(backend: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("sharpose_small_256x192", backend=backend, **SMALL)


def test_export_records_the_registered_ops(device, one_thread):
    model = small_model("triton").eval().to(device)
    model.qp_threshold = math.inf
    images = torch.randn(2, 3, 128, 96, device=device)
    program = torch.export.export(Outputs(model), (images,))
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"sharpose.attention_with_score.default", "sharpose.varlen_attention.default",
            "sharpose.compose_tokens.default"} <= called
    other = torch.randn(2, 3, 128, 96, device=device)  # other images: nothing baked into the program
    with torch.no_grad():
        expected = Outputs(model)(other)
        actual = program.module()(other)
    names = ("heatmaps", "coarse_heatmaps", "quality", "patch_scores")
    # the program runs the same aten ops and kernels on the same inputs: at most a few fp32 roundings
    for name, got, want in zip(names, actual, expected):
        assert_rel_close(got, want, 16 * FP32_EPS, name)
    assert torch.equal(actual[-1], expected[-1])


def test_compiled_capturable_forward_equals_eager(device, one_thread):
    model = small_model("triton").eval().to(device)
    model.qp_threshold = math.inf
    assert model.capturable
    images = torch.randn(2, 3, 128, 96, device=device)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")
    with torch.no_grad():
        expected, actual = model(images), compiled(images)
    # The same kernels; the glue ops around them are traced to aten (e.g. linear as addmm, the
    # bilinear resize decomposed), which rounds differently in fp32: a few ulps per op through two
    # blocks, the decoder and its upsampling, 64 ulps of the output's magnitude with a margin.
    for name in ("heatmaps", "coarse_heatmaps", "quality", "patch_scores"):
        assert_rel_close(getattr(actual, name), getattr(expected, name), 64 * FP32_EPS, name)
    assert torch.equal(actual.selected, expected.selected)


def counting(monkeypatch, module, name: str) -> list[int]:
    """Count the calls of a launcher, which the registered ops call at run time."""
    calls = [0]
    launcher = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return launcher(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_compiled_training_step_gives_reference_gradients(device, one_thread, monkeypatch):
    reference = small_model("reference").train()
    triton = small_model("triton").train().to(device)
    triton.load_state_dict(reference.state_dict())
    assert triton.capturable  # training: every sample refines, fixed budget
    backward_calls = [counting(monkeypatch, module, name) for module, name in (
        (fused_attention, "attention_backward"), (varlen_fused_attention, "varlen_attention_backward"),
        (token_composition, "compose_tokens_backward"))]
    compiled = torch.compile(triton, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")
    images = torch.randn(2, 3, 128, 96)

    def loss(out):
        return out.heatmaps.square().mean() + out.coarse_heatmaps.square().mean() + out.quality.square().mean()

    loss(compiled(images.to(device))).backward()
    loss(reference(images)).backward()
    assert all(calls[0] > 0 for calls in backward_calls), "the compiled backward did not run the Triton kernels"
    # fp32 attention summed in another order than PyTorch's (a few ulps per output element), carried
    # through two blocks, the decoder and the glue traced to aten: observed up to 8e-7 of a
    # gradient's magnitude; 1e-5 leaves a margin of about 10.
    grads = {name: p.grad for name, p in reference.named_parameters()}
    for name, p in triton.named_parameters():
        assert p.grad is not None, name
        assert_rel_close(p.grad.cpu(), grads[name], 1e-5, name)


def test_sharpose_export_keeps_the_triton_backend(tmp_path, one_thread):
    """`sharpose export` records the Triton ops (TorchScript here: traced through the registered ops)
    and refuses ONNX, which cannot hold them, in one line."""
    if torch.cuda.is_available():
        pytest.skip("export runs the model on the CPU, under the interpreter")
    wrapped = exportable(small_model("triton"))
    assert wrapped.model.backend == "triton"
    path = tmp_path / "model.pt"
    export(wrapped, torch.randn(1, 3, 128, 96), "torchscript", path)
    assert "sharpose::attention_with_score" in str(torch.jit.load(str(path)).inlined_graph)
    images = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        expected = wrapped(images)
    actual = run_exported("torchscript", path, images)
    for name, got, want in zip(wrapped.output_names[:4], actual, expected):  # the same ops on the same inputs
        assert_rel_close(got, want, 16 * FP32_EPS, name)
    with pytest.raises(ExportError, match=r"^--format onnx cannot hold the Triton kernels .*backend=reference$"):
        export(wrapped, torch.randn(1, 3, 128, 96), "onnx", tmp_path / "model.onnx")


# ----------------------------------------------------------------------------------------------
# Registration once per process
# ----------------------------------------------------------------------------------------------

RELOAD = """
import importlib, torch
import kernels.triton_ops
from kernels import fused_attention, token_composition, varlen_fused_attention
schemas = {n: str(getattr(torch.ops.sharpose, n).default._schema) for n in
           ("attention", "attention_with_score", "varlen_attention", "compose_tokens")}
for module in (fused_attention, varlen_fused_attention, token_composition):
    importlib.reload(module)
assert schemas == {n: str(getattr(torch.ops.sharpose, n).default._schema) for n in schemas}
q = torch.randn(1, 2, 8, 16, requires_grad=True)
fused_attention.attention(q, q, q).sum().backward()  # through the registered op
with torch.no_grad():
    fused_attention.attention(q, q, q)  # launched directly
assert q.grad is not None and torch.isfinite(q.grad).all()
"""


def test_reloading_a_kernel_module_registers_nothing_twice():
    if torch.cuda.is_available():
        pytest.skip("runs the kernels on CPU tensors, under the interpreter")
    env = {"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", RELOAD], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parent.parent,
                            env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 0, result.stderr[-3000:]
