"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90, no GPU needed.

Every kernel (fused attention, its variable-length form, the sparse token composition), at the
configurations the launchers use for the model (head dim 32 and 64, fp16 and bf16), must compile
through the full Triton -> PTX -> cubin pipeline with zero register spills, fit the shared memory
of the architecture and use tensor cores for its dots. This also
catches what the interpreter lets through (e.g. tl.dot operands of different dtypes).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import pytest

from kernels.aot import (
    KernelSpec,
    _sass_spills,
    attention_kernel_specs,
    composition_kernel_specs,
    ctas_per_sm,
    kernel_signature,
    measure_specs,
    tools_available,
    varlen_attention_kernel_specs,
)

_TOOLS_OK, _WHY = tools_available()
pytestmark = [
    pytest.mark.skipif(not _TOOLS_OK, reason=f"CUDA tools from the triton wheel cannot run here: {_WHY}"),
    pytest.mark.slow,
]

CAPS = (80, 90)
HEAD_DIMS = (32, 64)
DTYPES = ("float16", "bfloat16")
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # max dynamic shared memory per block


def measure_specs_cached(config, specs) -> list[dict]:
    """`kernels.aot.measure_specs(specs)` (minutes of compiling on a 2-core CPU), kept in pytest's
    cache under a key of the specs, the kernels' sources and the triton version: a rerun with the
    same kernels reads the rows back. Test workers (pytest-xdist) wait for each other under a file
    lock, so that the specs are compiled once per run, not once per worker."""
    digest = hashlib.sha256(json.dumps([asdict(s) for s in specs], sort_keys=True, default=str).encode())
    digest.update(version("triton").encode())
    for source in sorted((Path(__file__).resolve().parent.parent / "kernels").glob("*.py")):
        digest.update(source.read_bytes())
    key = f"sharpose/aot/{digest.hexdigest()[:24]}"
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    if cache is None:
        return measure_specs(specs)
    with open(cache.mkdir("sharpose-aot") / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        rows = cache.get(key, None)
        if rows is None:
            rows = measure_specs(specs)
            cache.set(key, rows)
    return rows


def _oversized_spec() -> KernelSpec:
    """A configuration known to spill (fp32, d 128, 32 x 32 tiles, 4 warps on sm_80): proves the
    measurement does see spills."""
    from kernels.fused_attention import _attn_fwd

    sig, consts, div = kernel_signature(
        _attn_fwd, "fp32",
        {"HEAD_DIM": 128, "BLOCK_D": 128, "BLOCK_M": 32, "BLOCK_N": 32, "HAS_SCORE": False, "ONE_KEY_TILE": False,
         "DOT_PRECISION": "ieee"},
    )
    return KernelSpec("_attn_fwd", "kernels.fused_attention", sig, consts, div, 4, 1, 80, {"variant": "oversized"})


LENGTHS = (66, 126, 137)  # coarse stage (one key tile), the fine stage's shortest multi-tile length
FP32_LENGTHS = (17, 66, 126)


@pytest.fixture(scope="module")
def measured(request) -> dict[str, list[dict]]:
    """Every configuration this module checks, by group, measured in one call: the compiler
    processes import torch and triton once for all of them."""
    groups = {
        "attention": attention_kernel_specs(CAPS, HEAD_DIMS, DTYPES) + [_oversized_spec()],
        "varlen": varlen_attention_kernel_specs(CAPS, HEAD_DIMS, DTYPES),
        "lengths": attention_kernel_specs(CAPS, HEAD_DIMS, DTYPES, seq_lens=LENGTHS)
        + attention_kernel_specs(CAPS, HEAD_DIMS, ("float32",), seq_lens=(*FP32_LENGTHS, None)),
        "composition": composition_kernel_specs(capabilities=CAPS, dims=(768,), dtypes=DTYPES),
    }
    rows = iter(measure_specs_cached(request.config, [spec for specs in groups.values() for spec in specs]))
    return {name: [next(rows) for _ in specs] for name, specs in groups.items()}


@pytest.fixture(scope="module")
def resources(measured):
    return {
        "oversized" if r["variant"] == "oversized" else (r["capability"], r["head_dim"], r["dtype"], r["variant"]): r
        for r in measured["attention"]
    }


def assert_compiles_cleanly(r: dict, cap: int, uses_dots: bool, wgmma: bool = True) -> None:
    """No spills or local memory, shared memory within the card's limit, registers and shared
    memory for at least 2 CTAs per SM, dots on tensor cores (wgmma on sm_90 unless a tile is too
    short for it: wgmma needs 64 rows per warp group)."""
    assert 0 < r["registers"] <= 255, r
    assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"register spills: {r}"
    assert r["stack"] == 0 and r["local"] == 0, f"local memory in use: {r}"
    assert 0 < r["shared_mem"] <= SHARED_LIMIT[cap], r
    assert r["ctas_per_sm"] >= 2, f"fewer than 2 CTAs per SM: {r}"
    if uses_dots:  # the delta preprocess has no matrix product
        expected = ("wgmma",) if cap >= 90 and wgmma else ("wgmma", "mma") if cap >= 90 else ("mma",)
        assert r["tensor_cores"] in expected, f"dots not on tensor cores: {r}"


VARIANTS = ("fwd", "fwd+score", "bwd delta", "bwd dk/dv", "bwd dq")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("cap", CAPS)
def test_compiles_without_spills(resources, cap, head_dim, dtype, variant):
    assert_compiles_cleanly(resources[(cap, head_dim, dtype, variant)], cap, uses_dots=variant != "bwd delta")


def test_launcher_configs_are_the_ones_compiled():
    import torch

    from kernels.fused_attention import attention_config

    for spec in attention_kernel_specs((90,), (64,), ("float16",), seq_lens=(66, 126, None)):
        n = None if spec.label["seq_len"] == "long" else spec.label["seq_len"]
        cfg = attention_config(64, torch.float16, seq_len=n)
        if spec.kernel == "_attn_fwd":
            assert spec.constexprs["ONE_KEY_TILE"] == (n is not None)
        launch = {"fwd": cfg.fwd, "fwd+score": cfg.fwd, "bwd delta": cfg.delta, "bwd dk/dv": cfg.dkdv,
                  "bwd dq": cfg.dq}[spec.label["variant"]]
        assert spec.constexprs["BLOCK_M"] == launch.block_m
        assert spec.constexprs.get("BLOCK_N", 0) == launch.block_n
        assert (spec.num_warps, spec.num_stages) == (launch.num_warps, launch.num_stages)
        assert spec.constexprs["BLOCK_D"] == cfg.block_d


# ------------------------------------------------------------------------------------------------
# The variable-length (cu_seqlens) attention kernels of kernels/varlen_fused_attention.py
# ------------------------------------------------------------------------------------------------

VARLEN_VARIANTS = ("varlen fwd", "varlen bwd delta", "varlen bwd dk/dv", "varlen bwd dq")


@pytest.fixture(scope="module")
def varlen_resources(measured):
    return {(r["capability"], r["head_dim"], r["dtype"], r["variant"]): r for r in measured["varlen"]}


@pytest.mark.parametrize("variant", VARLEN_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("cap", CAPS)
def test_varlen_compiles_without_spills(varlen_resources, cap, head_dim, dtype, variant):
    assert_compiles_cleanly(varlen_resources[(cap, head_dim, dtype, variant)], cap,
                            uses_dots=variant != "varlen bwd delta")


def test_varlen_launcher_configs_are_the_ones_compiled():
    import torch

    from kernels.fused_attention import attention_config

    for d in HEAD_DIMS:
        cfg = attention_config(d, torch.float16)
        for spec in varlen_attention_kernel_specs((90,), (d,), ("float16",)):
            launch = {"varlen fwd": cfg.fwd, "varlen bwd delta": cfg.delta, "varlen bwd dk/dv": cfg.dkdv,
                      "varlen bwd dq": cfg.dq}[spec.label["variant"]]
            assert spec.constexprs["BLOCK_M"] == launch.block_m
            assert spec.constexprs.get("BLOCK_N", 0) == launch.block_n
            assert (spec.num_warps, spec.num_stages) == (launch.num_warps, launch.num_stages)
            assert spec.constexprs["BLOCK_D"] == cfg.block_d


def test_measurement_detects_spills(resources):
    r = resources["oversized"]
    assert r["spill_stores"] > 0 and r["spill_loads"] > 0 and r["stack"] > 0, r


def test_sass_spill_parser():
    sass = """
        /*0100*/  STL.64 [R1+0x8], R4 ;
        /*0110*/  STL [R1], R2 ;
        /*0120*/  LDL.128 R8, [R1+0x10] ;
        /*0130*/  STG.E [R2.64], R4 ;
        /*0140*/  LDS R5, [R0] ;
        /*0150*/  LDL.LU R6, [R1+0x4] ;
        /*0160*/  LDL.LU.64 R10, [R1+0x18] ;
        /*0170*/  STL.U8 [R1+0x20], R3 ;
    """
    # a last-use load (LU) reads as many bytes as a plain one of its width
    assert _sass_spills(sass) == {"spill_stores": 13, "spill_loads": 28}


SPILL_CROSS_CHECK = """
import json, subprocess, sys, tempfile
from pathlib import Path
from kernels.aot import KernelSpec, _compile_with_ptxas_log, _ptxas_spills, _sass_spills, find_tool

specs = [KernelSpec(**d) for d in json.loads(sys.argv[1])]
found = []
for spec in specs:
    compiled, log = _compile_with_ptxas_log(spec)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([find_tool("cuobjdump"), "-sass", str(cubin)], check=True, capture_output=True,
                              text=True).stdout
    found.append([_ptxas_spills(log), _sass_spills(sass)])
print(json.dumps(found))
"""


def test_ptxas_spill_report_equals_the_sass_count(tmp_path):
    """Spills are read from ptxas's own report; the SASS count (used when triton's cache skips ptxas)
    gives the same bytes, on a kernel that spills and on one that does not."""
    import os
    import subprocess
    import sys

    from kernels.fused_attention import _attn_fwd

    spilling = {"HEAD_DIM": 128, "BLOCK_D": 128, "BLOCK_M": 32, "BLOCK_N": 32, "HAS_SCORE": False,
                "ONE_KEY_TILE": False, "DOT_PRECISION": "ieee"}
    specs = [KernelSpec("_attn_fwd", "kernels.fused_attention", *kernel_signature(_attn_fwd, "fp32", spilling),
                        4, 1, 80)]
    specs += attention_kernel_specs((90,), (64,), ("float16",), seq_lens=(66,))[:1]
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    run = subprocess.run([sys.executable, "-c", SPILL_CROSS_CHECK, json.dumps([asdict(s) for s in specs])],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (ptxas_spilling, sass_spilling), (ptxas_clean, sass_clean) = json.loads(run.stdout.strip().splitlines()[-1])
    assert ptxas_spilling == sass_spilling and ptxas_spilling["spill_stores"] > 0, (ptxas_spilling, sass_spilling)
    assert ptxas_clean == sass_clean == {"spill_stores": 0, "spill_loads": 0}


# ------------------------------------------------------------------------------------------------
# Tiles per sequence length (the one-key-tile forward of the coarse stage) and fp32 on tensor cores
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def length_resources(measured):
    return {(r["capability"], r["head_dim"], r["dtype"], r["precision"], r["seq_len"], r["variant"]): r
            for r in measured["lengths"]}


def _built(resources, cap, head_dim, dtype, precision, n, variant):
    """The measurement of the configuration launched for n keys (lengths sharing one are built once)."""
    import torch

    from kernels.fused_attention import attention_config

    cfg = attention_config(head_dim, getattr(torch, dtype), seq_len=n, fp32_precision=precision)
    launch = {"fwd": cfg.fwd, "fwd+score": cfg.fwd, "bwd dk/dv": cfg.dkdv, "bwd dq": cfg.dq}[variant]
    one_tile = variant.startswith("fwd") and n is not None and n <= launch.block_n
    rows = [r for k, r in resources.items() if k[:4] == (cap, head_dim, dtype, precision) and k[5] == variant
            and (r["block_m"], r["block_n"], r["num_stages"]) == (launch.block_m, launch.block_n,
                                                                   launch.num_stages)
            and (not variant.startswith("fwd") or r["one_key_tile"] == one_tile)]
    assert rows, (cap, head_dim, dtype, precision, n, variant)
    return rows[0]


@pytest.mark.parametrize("variant", ("fwd", "fwd+score"))
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("cap", CAPS)
def test_forward_for_length_compiles_cleanly(length_resources, cap, head_dim, dtype, n, variant):
    r = _built(length_resources, cap, head_dim, dtype, "ieee", n, variant)
    assert_compiles_cleanly(r, cap, uses_dots=True, wgmma=r["block_m"] >= 64)


@pytest.mark.parametrize("variant", ("fwd", "fwd+score"))
@pytest.mark.parametrize("n", FP32_LENGTHS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("cap", CAPS)
def test_fp32_forward_for_length(length_resources, cap, head_dim, n, variant):
    """fp32 forward tiles per length: TF32 on tensor cores, IEEE without; neither spills."""
    tf32 = _built(length_resources, cap, head_dim, "float32", "tf32", n, variant)
    assert_compiles_cleanly(tf32, cap, uses_dots=True, wgmma=False)
    ieee = _built(length_resources, cap, head_dim, "float32", "ieee", n, variant)
    assert ieee["tensor_cores"] == "-", ieee
    assert ieee["spill_stores"] == 0 and ieee["spill_loads"] == 0 and ieee["ctas_per_sm"] >= 2, ieee


@pytest.mark.parametrize("variant", ("fwd", "fwd+score", "bwd dk/dv", "bwd dq"))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("cap", CAPS)
def test_fp32_tf32_on_tensor_cores_ieee_not(length_resources, cap, head_dim, variant):
    """fp32 dots with input_precision="tf32" compile to tensor-core instructions without spills;
    the IEEE variant (precision "highest", the parity tests') has none, so the switch is real."""
    tf32 = _built(length_resources, cap, head_dim, "float32", "tf32", None, variant)
    assert_compiles_cleanly(tf32, cap, uses_dots=True, wgmma=False)
    ieee = _built(length_resources, cap, head_dim, "float32", "ieee", None, variant)
    assert ieee["tensor_cores"] == "-", ieee
    assert ieee["spill_stores"] == 0 and ieee["spill_loads"] == 0, f"register spills: {ieee}"


# ------------------------------------------------------------------------------------------------
# The sparse token composition kernels of kernels/token_composition.py, at D = 768 (ViT-B)
# ------------------------------------------------------------------------------------------------


def test_composition_kernels_compile_without_spills(measured):
    rows = measured["composition"]
    assert len(rows) == 16  # 4 kernels x 2 dtypes x 2 architectures
    for row in rows:
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0 and row["local"] == 0, row
        assert row["registers"] <= 128, row


def test_ctas_per_sm_arithmetic():
    # 128 registers x 128 threads: 65536 / 16384 = 4 CTAs by registers; 100 KiB of shared memory:
    # 1 CTA on sm_80 (164 KiB per SM), 2 on sm_90 (228 KiB per SM)
    assert ctas_per_sm(80, 128, 4, 0) == 4
    assert ctas_per_sm(80, 128, 4, 100 * 1024) == 1
    assert ctas_per_sm(90, 128, 4, 100 * 1024) == 2
    assert ctas_per_sm(90, 255, 8, 0) == 1  # 256 registers x 256 threads fill the register file
