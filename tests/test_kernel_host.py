"""The kernels package's structure and the host side of the Triton ops: no import cycle, one op
set, triton imported only on first use, the direct (no-dispatch) path equal to the registered op,
and a clear refusal of bf16 under the interpreter."""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import kernels
from kernels import reference
from kernels.op_set import OPS, TRITON_MODULES

KERNELS_DIR = Path(kernels.__file__).parent
CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
# Package structure
# ----------------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    return "kernels" if path.stem == "__init__" else f"kernels.{path.stem}"


def import_graph(directory: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it may import: `import` / `from ... import` statements anywhere
    in the file (also inside functions), and every string constant naming one of the modules, which
    covers `importlib.import_module` targets, also when they come from a table of module names.
    (Importing a submodule runs the package's __init__ first, whoever imports it: that is no edge.)"""
    paths = sorted(directory.glob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x / from .x import y
                    base = "kernels" + (f".{base}" if base else "")
                for alias in node.names:  # `from kernels import reference` imports the submodule
                    names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
        graph[_module_name(path)] = {n for n in names if n in modules} - {_module_name(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_no_import_cycle_among_kernel_modules():
    graph = import_graph(KERNELS_DIR)
    assert graph["kernels.fused_attention"] >= {"kernels.device", "kernels.library"}  # the scan sees imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_cycle_finder_sees_import_module_targets(tmp_path):
    """The layout the package had: fused_attention -> backend -> (import_module) triton_ops -> fused_attention."""
    (tmp_path / "fused_attention.py").write_text("from kernels.backend import device_guard\n")
    (tmp_path / "backend.py").write_text(
        "import importlib\n\ndef ops_for():\n    return importlib.import_module('kernels.triton_ops')\n")
    (tmp_path / "triton_ops.py").write_text("from kernels.fused_attention import attention\n")
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle is not None and set(cycle) == {"kernels.fused_attention", "kernels.backend", "kernels.triton_ops"}


def test_one_op_set_for_both_backends():
    from kernels import triton_ops

    assert set(OPS) == {"attention", "attention_with_score", "compose_tokens", "compose_tokens_padded",
                        "varlen_attention"}
    assert triton_ops.__all__ == list(OPS)
    for name in OPS:
        ours, theirs = inspect.signature(getattr(triton_ops, name)), inspect.signature(getattr(reference, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in theirs.parameters.values()], name
        assert getattr(triton_ops, name) is getattr(importlib.import_module(TRITON_MODULES[name]), name)
        assert getattr(kernels, name) is getattr(triton_ops, name)


def test_importing_kernels_does_not_import_triton():
    code = ("import sys, torch, kernels, kernels.backend, kernels.device, kernels.library, kernels.op_set; "
            "kernels.ops_for('reference', torch.device('cpu')); "
            "assert 'triton' not in sys.modules, 'triton was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=KERNELS_DIR.parent)
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# The host path of the ops
# ----------------------------------------------------------------------------------------------


def bf16_calls():
    """One call of each op on small bf16 CPU tensors (every float input bf16, or only the first)."""
    import torch.nn.functional as F

    def attention(dtype, grad):
        q, k, v = (torch.randn(1, 2, 8, 16, dtype=dtype, requires_grad=grad) for _ in range(3))
        return kernels.attention(q, k, v)

    def attention_with_score(dtype, grad):
        q, k, v = (torch.randn(1, 2, 8, 16, dtype=dtype, requires_grad=grad) for _ in range(3))
        return kernels.attention_with_score(q, k, v, (0, 2))[0]

    def varlen_attention(dtype, grad):
        q, k, v = (torch.randn(8, 2, 16, dtype=dtype, requires_grad=grad) for _ in range(3))
        return kernels.varlen_attention(q, k, v, torch.tensor([0, 3, 8], dtype=torch.int32), 5)

    def compose_tokens(dtype, grad):
        K, D, N_c, ks = 2, 8, 6, [1, 0]
        order = torch.stack([torch.randperm(N_c) for _ in ks])
        cu_seqlens = F.pad(torch.tensor([K + N_c + 3 * k for k in ks]).cumsum(0), (1, 0)).to(torch.int32)
        tokens = [torch.randn(*shape, dtype=dtype, requires_grad=grad)
                  for shape in ((K, D), (4 * sum(ks), D), (4 * N_c, D), (sum(ks), D), (len(ks), N_c, D))]
        return kernels.compose_tokens(*tokens, order, cu_seqlens, (2, 3), K + N_c + 3)

    return {"attention": attention, "attention_with_score": attention_with_score,
            "varlen_attention": varlen_attention, "compose_tokens": compose_tokens}


@pytest.mark.skipif(CUDA, reason="on a GPU the kernels compute in bf16")
@pytest.mark.parametrize("grad", [False, True], ids=["no grad", "requires grad"])
@pytest.mark.parametrize("op", sorted(bf16_calls()))
def test_interpreter_refuses_bf16_in_one_line(op, grad):
    call = bf16_calls()[op]
    assert call(torch.float16, grad).dtype == torch.float16  # the same call in fp16 runs
    with pytest.raises(ValueError, match=rf"^{op} \(Triton interpreter, CPU\) does not support torch\.bfloat16: "
                                         r"[^\n]*use float32 or float16 on the CPU[^\n]*$"):
        call(torch.bfloat16, grad)


def test_direct_launch_equals_the_registered_op(device):
    """Without gradients the functions launch the kernels directly; with them they go through
    torch.ops.sharpose.*: the same kernels on the same inputs, the same bits."""
    q, k, v = torch.randn(3, 2, 3, 40, 32, device=device).unbind(0)
    outs, terms = [], []
    for grad in (False, True):
        q_in = q.clone().requires_grad_(grad)
        out, term = kernels.attention_with_score(q_in, k, v, (1, 6), (10, 40))
        outs.append(out)
        terms.append(term)
    assert outs[1].grad_fn is not None and outs[0].grad_fn is None
    assert torch.equal(outs[0], outs[1].detach())
    assert torch.equal(terms[0], terms[1]) and terms[0].abs().sum() > 0


class _CountedKernel:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](...)` records the launch and returns."""

    def __init__(self, name: str, launched: list[str]) -> None:
        self.name, self.launched = name, launched

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launched.append(self.name)


class _TorchCalls(TorchFunctionMode):
    """The names of the torch functions and tensor methods called while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


# Tensor metadata reads: no device work
_METADATA = {"__get__", "stride", "size", "dim"}


@pytest.mark.parametrize("grad", [False, True], ids=["no grad", "requires grad"])
def test_score_call_is_one_kernel_and_its_outputs(monkeypatch, grad):
    """The score adds no device work of its own per call: `attention_with_score` allocates the
    output, the term and, when a backward will follow, the log-sum-exp, and launches the forward
    kernel; nothing else (no reduction, no add, no copy: the model sums all layers' terms once)."""
    from kernels import fused_attention

    launched: list[str] = []
    monkeypatch.setattr(fused_attention, "_attn_fwd", _CountedKernel("_attn_fwd", launched))
    q, k, v = torch.randn(3, 2, 4, 66, 32).unbind(0)
    q.requires_grad_(grad)
    fused_attention.attention_with_score(q, k, v, (1, 17), (18, 66))  # the signature's first call checks it
    launched.clear()
    with _TorchCalls() as calls:
        fused_attention.attention_with_score(q, k, v, (1, 17), (18, 66))
    assert launched == ["_attn_fwd"]
    allocations = ["new_empty", "new_empty", "new_empty_strided"] if grad else ["new_empty", "new_empty_strided"]
    assert sorted(name for name in calls.names if name not in _METADATA) == allocations, calls.names


@pytest.mark.skipif(CUDA, reason="switches the interpreter off for CPU tensors")
def test_checks_remembered_per_signature_still_catch_what_changed(monkeypatch):
    """`attention` checks a signature (shapes, dtypes, devices, score ranges) once; what the signature
    does not hold is still checked on every call: new score ranges, the device's ability to run."""
    q = torch.randn(1, 2, 8, 16)
    with torch.no_grad():
        kernels.attention_with_score(q, q, q, (0, 2), (4, 8))
        with pytest.raises(ValueError, match=r"score_cols=\(6, 10\) must be .* <= 8 key columns"):
            kernels.attention_with_score(q, q, q, (0, 2), (6, 10))
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="attention_with_score \\(Triton\\) got tensors on cpu"):
            kernels.attention_with_score(q, q, q, (0, 2), (4, 8))


@pytest.mark.skipif(CUDA, reason="switches the interpreter off for CPU tensors")
def test_varlen_checks_remembered_per_signature_still_catch_what_changed(monkeypatch):
    """`varlen_attention` checks a signature once too: a max_seqlen of another type (True == 1, or
    an unhashable list), new offsets in cu_seqlens (read on the CPU) and the interpreter switch are still caught."""
    q = torch.randn(6, 2, 16)
    cu_seqlens = torch.tensor([0, 1, 6], dtype=torch.int32)
    with torch.no_grad():
        one_token = torch.tensor([0, 1], dtype=torch.int32)
        kernels.varlen_attention(q[:1], q[:1], q[:1], one_token, 1)
        with pytest.raises(TypeError, match="max_seqlen must be a python int"):
            kernels.varlen_attention(q[:1], q[:1], q[:1], one_token, True)
        with pytest.raises(TypeError, match="max_seqlen must be a python int"):  # unhashable: no signature
            kernels.varlen_attention(q[:1], q[:1], q[:1], one_token, [1])
        kernels.varlen_attention(q, q, q, cu_seqlens, 5)
        with pytest.raises(ValueError, match="cu_seqlens\\[-1\\] = 5 but q, k, v hold T = 6"):
            kernels.varlen_attention(q, q, q, torch.tensor([0, 1, 5], dtype=torch.int32), 5)
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="varlen_attention \\(Triton\\) got tensors on cpu"):
            kernels.varlen_attention(q, q, q, cu_seqlens, 5)


@pytest.mark.skipif(CUDA, reason="switches the interpreter off for CPU tensors")
def test_compose_checks_remembered_per_signature_still_catch_what_changed(monkeypatch):
    """`compose_tokens` too: after a good call, another grid, a grid that is no pair of ints, a
    max_seqlen of another type and the interpreter switch are each caught with their own message."""
    K, (hc, wc), D = 3, (2, 3), 8
    tokens = [torch.randn(*shape) for shape in ((K, D), (4, D), (4 * hc * wc, D), (1, D), (1, hc * wc, D))]
    order = torch.arange(hc * wc)[None]
    cu_seqlens = torch.tensor([0, K + hc * wc + 3], dtype=torch.int32)
    call = functools.partial(kernels.compose_tokens, *tokens, order, cu_seqlens)
    with torch.no_grad():
        call((hc, wc), 12)
        with pytest.raises(ValueError, match="coarse_embed has 6 patches per sample but coarse_grid"):
            call((3, 3), 12)
        with pytest.raises(ValueError, match="coarse_grid must be two positive ints"):
            call(None, 12)
        with pytest.raises(ValueError, match="coarse_grid must be two positive ints"):
            call(([2], [3]), 12)
        with pytest.raises(TypeError, match="max_seqlen must be a python int"):
            call((hc, wc), 12.0)
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="compose_tokens \\(Triton\\) got tensors on cpu"):
            call((hc, wc), 12)


def test_a_non_tensor_input_is_named_with_gradients_enabled():
    """Choosing the call's path (launch, autograd, trace) reads only tensors: the op's own checks
    name the argument that is not one."""
    q = torch.randn(4, 2, 16, requires_grad=True)
    cu_seqlens = torch.tensor([0, 4], dtype=torch.int32)
    assert torch.is_grad_enabled()
    with pytest.raises(TypeError, match="^q must be a torch.Tensor, got NoneType$"):
        kernels.varlen_attention(None, q, q, cu_seqlens, 4)
    with pytest.raises(TypeError, match="^keypoint_tokens must be a torch.Tensor, got list$"):
        kernels.compose_tokens([1.0], q, q, q, q, q, cu_seqlens, (2, 3), 10)


# ----------------------------------------------------------------------------------------------
# The interpreter's overflow checks: computed, then dropped unless in debug mode
# ----------------------------------------------------------------------------------------------


def test_overflow_checks_are_skipped_only_where_nothing_reads_them():
    import dataclasses
    from types import SimpleNamespace

    from kernels.device import skip_unread_overflow_checks

    @dataclasses.dataclass(frozen=True)
    class Options:
        debug: bool
        sanitize_overflow: bool = True

    for debug in (False, True):
        interpreter = SimpleNamespace(interpreter_builder=SimpleNamespace(options=Options(debug)))
        skip_unread_overflow_checks(interpreter)
        assert interpreter.interpreter_builder.options == Options(debug, sanitize_overflow=debug)
    skip_unread_overflow_checks(SimpleNamespace())  # a triton without these options: left alone


@pytest.mark.skipif(CUDA, reason="the interpreter runs the CPU's kernels")
def test_the_interpreter_drops_the_overflow_verdict_outside_debug_mode():
    """What makes the checks dead work: an int32 product that overflows wraps, with the checks on
    as with them off, as it does compiled. A CPU launch of an op then leaves them off."""
    import dataclasses

    import triton
    import triton.language as tl
    from triton.runtime.interpreter import interpreter_builder

    @triton.jit
    def times(x_ptr, out_ptr, factor):
        tl.store(out_ptr, tl.load(x_ptr) * factor)

    x = torch.tensor([2**30], dtype=torch.int32)
    wrapped = torch.tensor([2**30 * 3], dtype=torch.int64).to(torch.int32)  # two's complement
    saved = interpreter_builder.options
    assert not saved.debug
    try:
        for checks in (True, False):
            interpreter_builder.options = dataclasses.replace(saved, sanitize_overflow=checks)
            out = torch.zeros_like(x)
            times[(1,)](x, out, 3)
            assert torch.equal(out, wrapped), (checks, out)
    finally:
        interpreter_builder.options = saved

    from kernels.fused_attention import attention

    attention(*torch.randn(3, 1, 1, 4, 8).unbind(0))
    assert interpreter_builder.options.sanitize_overflow is False
