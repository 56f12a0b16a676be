"""The AOT signature builder (`kernels.aot.kernel_signature`): its rule set, the kernels' naming
convention it relies on, and the kernel modules' independence from the AOT tooling. Fast: nothing
is compiled here (tests/test_aot.py compiles)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.aot import (
    _FLOAT_ARGS,
    _PLAIN_INTS,
    attention_kernel_specs,
    composition_kernel_specs,
    kernel_signature,
    varlen_attention_kernel_specs,
)

REPO = Path(__file__).resolve().parent.parent
KERNEL_MODULES = ("kernels.fused_attention", "kernels.varlen_fused_attention", "kernels.token_composition")


class _Kernel:
    """Stands for a @triton.jit function: the builder reads only `arg_names`."""

    arg_names = ["x_ptr", "lse_ptr", "offsets_ptr", "stride_xn", "stride_xd", "seq_len_q", "qk_scale", "dim",
                 "BLOCK"]


def test_rules():
    sig, consts, divisible = kernel_signature(
        _Kernel, "fp16", {"BLOCK": 64}, pointer_types={"lse_ptr": "fp32", "offsets_ptr": "i32"},
        unit_strides=frozenset({"stride_xd"}),
    )
    assert sig == {"x_ptr": "*fp16", "lse_ptr": "*fp32", "offsets_ptr": "*i32", "stride_xn": "i32",
                   "stride_xd": "constexpr", "seq_len_q": "i32", "qk_scale": "fp32", "dim": "i32",
                   "BLOCK": "constexpr"}
    assert consts == {"stride_xd": 1, "BLOCK": 64}
    assert divisible == ["x_ptr", "lse_ptr", "offsets_ptr", "stride_xn", "dim"]  # seq_len_q is listed as plain


def test_divisible_false_keeps_pointers_only():
    _, _, divisible = kernel_signature(_Kernel, "fp32", {"BLOCK": 16}, divisible=False)
    assert divisible == ["x_ptr", "lse_ptr", "offsets_ptr"]


def _all_specs():
    return (attention_kernel_specs((90,), (64,), ("float16", "float32"), seq_lens=(66, None))
            + varlen_attention_kernel_specs((90,), (64,), ("float16", "float32"))
            + composition_kernel_specs((90,), (768,), ("float16",)))


def test_every_kernel_argument_follows_the_naming_convention():
    """A pointer not named `*_ptr` would be typed as an int: every argument the rules do not name
    (pointer, stride, listed float or int, constant) must be a channel count."""
    specs = _all_specs()
    kernels = {(s.module, s.kernel) for s in specs}
    assert len(kernels) == 12  # 4 batched attention, 4 varlen, 4 composition kernels
    for spec in specs:
        for name, kind in spec.signature.items():
            if name.endswith("_ptr"):
                assert kind.startswith("*"), (spec.kernel, name, kind)
            elif kind != "constexpr" and not name.startswith("stride_"):
                assert name in _FLOAT_ARGS | _PLAIN_INTS | {"dim"}, (spec.kernel, name)


def test_float32_buffers_and_offsets_keep_their_types():
    for spec in _all_specs():
        for name, kind in spec.signature.items():
            if name in ("lse_ptr", "delta_ptr", "score_ptr", "d_fine_pos_ptr"):
                assert kind == "*fp32", (spec.kernel, name)
            elif name == "cu_seqlens_ptr":
                assert kind == "*i32", (spec.kernel, name)
            elif name == "order_ptr":
                assert kind == "*i64", (spec.kernel, name)


def test_kernel_modules_do_not_import_the_aot_tooling():
    # one fresh interpreter imports the modules in turn: the first after which the tooling is loaded
    # is the one that imported it (a module cannot unload it again)
    code = ("import importlib, sys\n"
            f"for module in {list(KERNEL_MODULES)!r}:\n"
            "    importlib.import_module(module)\n"
            "    assert 'kernels.aot' not in sys.modules, f'importing {module} imported kernels.aot'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
