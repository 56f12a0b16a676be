"""Ahead-of-time compilation of Triton kernels for CUDA targets, without a GPU.

`triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cap, 32))`
runs the whole Triton pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin with the `ptxas`
shipped inside the triton wheel), so register pressure, spills and shared memory of a kernel
can be read without a device:

- registers, stack and local memory per thread: `cuobjdump --dump-resource-usage` on the cubin;
- spill stores / loads (bytes): what ptxas reports (`-v`, which triton passes; its log is printed
  with TRITON_DUMP_PTXAS_LOG=1). When triton takes the cubin from its cache, ptxas does not run:
  then the local-memory stores / loads (STL / LDL) in the cubin's SASS (`cuobjdump -sass`, as long
  as the compilation itself); Triton kernels keep no arrays in local memory, so these are the spills;
- shared memory: what Triton launches the kernel with (dynamic shared memory, `metadata.shared`),
  plus any static shared memory cuobjdump reports.

Under `TRITON_INTERPRET=1`, `@triton.jit` functions are interpreter objects that cannot be
compiled, so `measure_specs` runs the compilation in a subprocess with the interpreter off.

`attention_kernel_specs`, `varlen_attention_kernel_specs` and `composition_kernel_specs` list
the kernels of kernels/fused_attention.py, kernels/varlen_fused_attention.py and
kernels/token_composition.py exactly as their launchers call them (block sizes, warps, stages from
`attention_config` for each sequence length asked for, IEEE and TF32 dots for fp32; from
`composition_config` for each embedding dim), with the argument specialisations the model's
tensors produce at run time. One builder, `kernel_signature`, types every kernel's arguments from
their names (pointers end in `_ptr`); the kernel modules do not import this one.
`ctas_per_sm` turns registers and shared memory into resident CTAs per SM.

Command line: `python -m kernels.aot [--caps 80 90] [--head-dims 32 64] [--dtypes float16 bfloat16]`
prints the measurements as JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent

_TORCH_TO_TRITON = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "int32": "i32", "int64": "i64"}


@dataclass
class KernelSpec:
    """One kernel compilation: which @triton.jit function, its argument types and constants."""

    kernel: str  # attribute name in `module`
    module: str
    signature: dict[str, str]  # arg name -> "*fp16" | "i32" | "fp32" | "constexpr" ...
    constexprs: dict[str, Any]
    divisible_by_16: list[str] = field(default_factory=list)  # args specialised as multiples of 16
    num_warps: int = 4
    num_stages: int = 3
    capability: int = 90
    label: dict[str, Any] = field(default_factory=dict)  # free-form description (config, dtype, ...)


# ----------------------------------------------------------------------------------------------
# Tools shipped with triton
# ----------------------------------------------------------------------------------------------


def _triton_nvidia_bin() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        raise RuntimeError("triton is not installed")
    return Path(spec.origin).parent / "backends" / "nvidia" / "bin"


def find_tool(name: str, capability: int = 80) -> str:
    """Path of a CUDA tool (ptxas, cuobjdump) as triton uses it; falls back to the wheel's bin dir and PATH."""
    try:  # triton >= 3.2: knobs / get_ptxas know about the env overrides (TRITON_PTXAS_PATH, ...)
        if name == "ptxas":
            from triton.backends.nvidia import compiler as nv

            try:
                return nv.get_ptxas(capability).path
            except TypeError:
                return nv.get_ptxas().path
        from triton import knobs

        return getattr(knobs.nvidia, name).path
    except Exception:
        pass
    candidate = _triton_nvidia_bin() / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found in {_triton_nvidia_bin()} nor on PATH")
    return found


def tools_available() -> tuple[bool, str]:
    """(True, "") when ptxas and cuobjdump run here, else (False, why)."""
    for tool in ("ptxas", "cuobjdump"):
        try:
            path = find_tool(tool)
            subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot measure here"
            return False, f"{tool} cannot run: {exc}"
    return True, ""


# ----------------------------------------------------------------------------------------------
# Compile and measure (in-process; the interpreter must be off)
# ----------------------------------------------------------------------------------------------


def _ast_source(fn, signature: dict[str, str], constexprs: dict[str, Any], divisible: list[str]):
    """Build an ASTSource across triton versions (3.2+ take names; older ones indices)."""
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    attempts = [
        lambda: ASTSource(fn, signature, constexprs, attrs),
        lambda: ASTSource(fn, signature, constexprs),
        lambda: ASTSource(  # triton <= 3.1: index-keyed signature and constants, no constexpr type
            fn,
            {names.index(n): t for n, t in signature.items() if t != "constexpr"},
            {names.index(n): v for n, v in constexprs.items()},
        ),
    ]
    errors = []
    for make in attempts:
        try:
            return make()
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
    raise RuntimeError("cannot build an ASTSource with this triton: " + "; ".join(errors))


def _parse_resource_usage(text: str, name: str) -> dict[str, int]:
    usage: dict[str, int] = {}
    block = re.search(rf"Function {re.escape(name)}:\s*\n(.*?)(?:\n\s*Function |\Z)", text, re.S)
    body = block.group(1) if block else text
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", body)
        usage[key] = int(m.group(1)) if m else 0
    return usage


# An opcode with its modifiers, e.g. STL.64 or LDL.LU.128 (LU: last use, a cache hint)
_LOCAL_ACCESS = re.compile(r"\b(STL|LDL)((?:\.\w+)*)")
_ACCESS_BYTES = {"64": 8, "128": 16, "U8": 1, "S8": 1, "U16": 2, "S16": 2}  # any other width: 32 bits


def _sass_spills(sass: str) -> dict[str, int]:
    """Bytes stored to / loaded from local memory by the SASS (STL / LDL): Triton kernels keep
    no arrays in local memory, so these are the register spills, as ptxas -v counts them."""
    totals = {"STL": 0, "LDL": 0}
    for op, modifiers in _LOCAL_ACCESS.findall(sass):
        widths = [_ACCESS_BYTES[m] for m in modifiers.split(".") if m in _ACCESS_BYTES]
        totals[op] += widths[0] if widths else 4
    return {"spill_stores": totals["STL"], "spill_loads": totals["LDL"]}


_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_spills(log: str) -> dict[str, int] | None:
    """Spill bytes from ptxas's -v log (summed over its functions), or None when there is no log."""
    found = _PTXAS_SPILLS.findall(log)
    if not found:
        return None
    return {"spill_stores": sum(int(st) for st, _ in found), "spill_loads": sum(int(ld) for _, ld in found)}


def compile_spec(spec: KernelSpec):
    """Compile one spec for its CUDA capability; returns triton's CompiledKernel."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    fn = getattr(importlib.import_module(spec.module), spec.kernel)
    if not hasattr(fn, "arg_names") or type(fn).__name__ == "InterpretedFunction":
        raise RuntimeError("cannot compile under TRITON_INTERPRET=1; use measure_specs (runs a subprocess)")
    src = _ast_source(fn, spec.signature, spec.constexprs, spec.divisible_by_16)
    target = GPUTarget("cuda", spec.capability, 32)
    return triton.compile(src, target=target, options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})


def measure_spec(spec: KernelSpec) -> dict[str, Any]:
    """Compile one spec and read its resource usage: registers, spills, shared memory."""
    compiled, ptxas_log = _compile_with_ptxas_log(spec)
    cuobjdump = find_tool("cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage_text = subprocess.run(
            [cuobjdump, "--dump-resource-usage", str(cubin)], check=True, capture_output=True, text=True
        ).stdout
        spills = _ptxas_spills(ptxas_log)
        if spills is None:  # from triton's cache: no ptxas run to report them
            sass = subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
            spills = _sass_spills(sass)
    usage = _parse_resource_usage(usage_text, compiled.metadata.name)
    ptx = compiled.asm["ptx"]
    return {
        **spec.label,
        "kernel": spec.kernel,
        "capability": spec.capability,
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "registers": usage["REG"],
        "spill_stores": spills["spill_stores"],
        "spill_loads": spills["spill_loads"],
        "stack": usage["STACK"],
        "local": usage["LOCAL"],
        "shared_mem": int(compiled.metadata.shared) + usage["SHARED"],
        "tensor_cores": "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "-",
        "ctas_per_sm": ctas_per_sm(spec.capability, usage["REG"], spec.num_warps,
                                   int(compiled.metadata.shared) + usage["SHARED"]),
    }


def _compile_with_ptxas_log(spec: KernelSpec):
    """(compiled kernel, the log ptxas printed while building it: empty when it did not run)."""
    log = io.StringIO()
    previous = os.environ.get("TRITON_DUMP_PTXAS_LOG")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    try:
        with contextlib.redirect_stdout(log):
            compiled = compile_spec(spec)
    finally:
        if previous is None:
            del os.environ["TRITON_DUMP_PTXAS_LOG"]
        else:
            os.environ["TRITON_DUMP_PTXAS_LOG"] = previous
    return compiled, log.getvalue()


_REGISTERS_PER_SM = 65536
_SHARED_PER_SM = {80: 164 * 1024, 86: 100 * 1024, 89: 100 * 1024, 90: 228 * 1024}
_MAX_WARPS_PER_SM = {80: 64, 86: 48, 89: 48, 90: 64}


def ctas_per_sm(capability: int, registers: int, num_warps: int, shared_mem: int) -> int:
    """CTAs of a kernel resident on one SM at once, as limited by registers (allocated per warp in
    units of 256, i.e. per thread rounded up to 8), shared memory (1 KiB reserved per CTA) and
    warps per SM."""
    per_warp = -(-max(registers, 1) // 8) * 8 * 32
    by_registers = _REGISTERS_PER_SM // (per_warp * num_warps)
    by_shared = _SHARED_PER_SM.get(capability, 100 * 1024) // (shared_mem + 1024)
    by_warps = _MAX_WARPS_PER_SM.get(capability, 48) // num_warps
    return min(by_registers, by_shared, by_warps, 32)


def _measure_in_process(specs: list[KernelSpec]) -> list[dict[str, Any]]:
    return [measure_spec(s) for s in specs]


def measure_specs(specs: list[KernelSpec], jobs: int | None = None) -> list[dict[str, Any]]:
    """Measure every spec; runs subprocesses (interpreter off) split over `jobs` workers."""
    if not specs:
        return []
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(specs)))
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "0"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; keep its default
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    chunks = [specs[i::jobs] for i in range(jobs)]
    procs = []
    for chunk in chunks:
        payload = json.dumps([asdict(s) for s in chunk])
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernels.aot", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=str(_REPO_ROOT),
        )
        procs.append((proc, payload, chunk))
    # every worker is fed and drained at once (one thread each): talking to them in turn would
    # leave all but one waiting for their input
    with ThreadPoolExecutor(len(procs)) as pool:
        outputs = list(pool.map(lambda p: p[0].communicate(p[1]), procs))
    results: list[tuple[KernelSpec, dict[str, Any]]] = []
    for (proc, _, chunk), (out, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"AOT compilation failed:\n{err[-6000:]}")
        results.extend(zip(chunk, json.loads(out.strip().splitlines()[-1])))
    order = {id(s): i for i, s in enumerate(specs)}
    results.sort(key=lambda r: order[id(r[0])])
    return [r for _, r in results]


# ----------------------------------------------------------------------------------------------
# Argument types: one rule set for every kernel
# ----------------------------------------------------------------------------------------------

# Pointers end in `_ptr`. Scalars that are floats:
_FLOAT_ARGS = frozenset({"qk_scale", "sm_scale", "score_scale"})
# Strides equal to 1 at run time (the contiguous head dim of q, k, v, out and their gradients; the
# contiguous score row): triton turns them into the constant 1, so the AOT build does the same.
_UNIT_STRIDES = frozenset({
    "stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_dod", "stride_dqd", "stride_dkd", "stride_dvd",
    "stride_score_c",
})
# Run-time ints the model does not make multiples of 16: lengths, counts, score bounds, and the
# strides of buffers sized by them (float32 log-sum-exp, delta and score term; the (R, N_c)
# patch order, N_c = 108 at 384 x 288).
_PLAIN_INTS = frozenset({
    "seq_len_q", "seq_len_k", "num_tokens", "num_keypoints", "num_patches", "num_samples",
    "score_row_start", "score_row_end", "score_col_start", "score_col_end", "num_score_slots", "store_lse",
    "stride_lse_b", "stride_lse_h", "stride_delta_b", "stride_delta_h",
    "stride_score_b", "stride_score_h", "stride_score_slot", "stride_order",
})


def triton_type(dtype: Any) -> str:
    """Triton's name of a torch dtype given as a dtype or its name ("float16" -> "fp16")."""
    return _TORCH_TO_TRITON[str(dtype).removeprefix("torch.")]


def kernel_signature(
    fn,
    elem_type: str,
    constexprs: dict[str, Any],
    *,
    pointer_types: dict[str, str] | None = None,
    unit_strides: frozenset[str] = _UNIT_STRIDES,
    plain_ints: frozenset[str] = _PLAIN_INTS,
    divisible: bool = True,
) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """(signature, constants, arguments divisible by 16) of the @triton.jit kernel `fn` as its
    launcher calls it on the model's tensors. Each of `fn.arg_names` is, in this order of rules:

    - in `constexprs`: a constant of that value;
    - `*_ptr`: a pointer to `elem_type` (the tensors' dtype, "fp16"), or to `pointer_types[name]`
      for a buffer of another dtype (float32 accumulators, int32 offsets); divisible by 16
      (PyTorch's allocations are aligned);
    - in `unit_strides`: the constant 1;
    - in `_FLOAT_ARGS`: fp32;
    - in `plain_ints`: i32;
    - anything else (row / head strides, channel counts): i32, divisible by 16 when `divisible`
      says the model's shapes make it so (3 H d and d for d = 32, 64; D = 768).
    """
    pointer_types = pointer_types or {}
    signature: dict[str, str] = {}
    consts: dict[str, Any] = {}
    divisible_args: list[str] = []
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
            consts[name] = constexprs[name]
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointer_types.get(name, elem_type)
            divisible_args.append(name)
        elif name in unit_strides:
            signature[name] = "constexpr"
            consts[name] = 1
        elif name in _FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if divisible and name not in plain_ints:
                divisible_args.append(name)
    return signature, consts, divisible_args


def _torch_dtype(dtype: Any):
    """A torch dtype from a dtype or its name."""
    import torch

    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def fp32_precisions(dtype: str, precisions=("ieee", "tf32")) -> tuple[str, ...]:
    """The dot precisions to build for a dtype: fp32 has an IEEE and a tensor-core (tf32) variant,
    16-bit types have one (their dots always run on tensor cores)."""
    return tuple(precisions) if dtype == "float32" else ("ieee",)


# ----------------------------------------------------------------------------------------------
# The attention kernels (batched and varlen) as their launchers call them
# ----------------------------------------------------------------------------------------------

_ATTN_MODULE = "kernels.fused_attention"
_VARLEN_MODULE = "kernels.varlen_fused_attention"
# float32 buffers (log-sum-exp, delta, score term) and int32 sequence offsets
_ATTN_POINTER_TYPES = {"lse_ptr": "fp32", "delta_ptr": "fp32", "score_ptr": "fp32", "cu_seqlens_ptr": "i32"}


def _attention_signature(fn, dtype: str, constexprs: dict[str, Any], has_score: bool = False):
    """`kernel_signature` of an attention kernel on `dtype` ("float16") tensors. Without the score
    the launcher passes the log-sum-exp buffer as `score_ptr`, with strides 0 (not the constant 1)."""
    unit_strides, plain_ints = _UNIT_STRIDES, _PLAIN_INTS
    if "score_ptr" in fn.arg_names and not has_score:
        unit_strides, plain_ints = unit_strides - {"stride_score_c"}, plain_ints | {"stride_score_c"}
    return kernel_signature(fn, triton_type(dtype), constexprs, pointer_types=_ATTN_POINTER_TYPES,
                            unit_strides=unit_strides, plain_ints=plain_ints)


def attention_kernel_specs(
    capabilities=(80, 90), head_dims=(32, 64), dtypes=("float16", "bfloat16"), config_fn=None,
    seq_lens=(None,), precisions=("ieee", "tf32"),
) -> list[KernelSpec]:
    """The forward (with and without score) and backward kernels at the launchers' configurations,
    for each key length in `seq_lens` (None: a long sequence) and, for fp32, each dot precision.

    `config_fn(head_dim, torch_dtype, seq_len, fp32_precision) -> AttentionConfig` replaces `attention_config` (to
    try others). The forward takes its one-tile path when the keys fit its key tile, as launched.
    """
    import importlib

    from kernels.fused_attention import attention_config

    module = importlib.import_module(_ATTN_MODULE)
    config_fn = config_fn or (lambda d, dtype, n, p: attention_config(d, dtype, seq_len=n, fp32_precision=p))
    specs, seen = [], set()
    for cap in capabilities:
        for d in head_dims:
            for dtype in dtypes:
                for n, precision in itertools.product(seq_lens, fp32_precisions(dtype, precisions)):
                    cfg = config_fn(d, _torch_dtype(dtype), n, precision)
                    one_tile = n is not None and n <= cfg.fwd.block_n
                    kernels = [
                        ("_attn_fwd", "fwd", cfg.fwd, {"HAS_SCORE": False, "ONE_KEY_TILE": one_tile}),
                        ("_attn_fwd", "fwd+score", cfg.fwd, {"HAS_SCORE": True, "ONE_KEY_TILE": one_tile}),
                    ]
                    if n is None:  # the backward's tiles do not depend on the length
                        kernels += [
                            ("_attn_bwd_preprocess", "bwd delta", cfg.delta, {}),
                            ("_attn_bwd_dkdv", "bwd dk/dv", cfg.dkdv, {}),
                            ("_attn_bwd_dq", "bwd dq", cfg.dq, {}),
                        ]
                    for kernel, variant, launch, extra in kernels:
                        consts = {"HEAD_DIM": d, "BLOCK_D": cfg.block_d, "BLOCK_M": launch.block_m, **extra}
                        if kernel != "_attn_bwd_preprocess":
                            consts["BLOCK_N"] = launch.block_n
                            consts["DOT_PRECISION"] = precision
                        key = (cap, kernel, dtype, tuple(sorted(consts.items())), launch)
                        if key in seen:  # another length with the same tiles: one build
                            continue
                        seen.add(key)
                        sig, consts, div = _attention_signature(getattr(module, kernel), dtype, consts,
                                                                extra.get("HAS_SCORE", False))
                        specs.append(KernelSpec(
                            kernel, _ATTN_MODULE, sig, consts, div, launch.num_warps, launch.num_stages, cap,
                            {"dtype": dtype, "head_dim": d, "variant": variant, "seq_len": n or "long",
                             "one_key_tile": extra.get("ONE_KEY_TILE", False),
                             "precision": precision, "block_m": launch.block_m, "block_n": launch.block_n},
                        ))
    return specs


def varlen_attention_kernel_specs(
    capabilities=(80, 90), head_dims=(32, 64), dtypes=("float16", "bfloat16"), config_fn=None,
    seq_lens=(None,), precisions=("ieee", "tf32"),
) -> list[KernelSpec]:
    """The forward and the three backward kernels of kernels.varlen_fused_attention at the launchers'
    configurations (`attention_config`, or `config_fn(head_dim, torch_dtype, max_seqlen, fp32_precision)`), for each
    `max_seqlen` in `seq_lens` (None: long sequences; the backward only there, its tiles do not
    depend on it) and, for fp32, each dot precision. Variants are labelled "varlen fwd",
    "varlen bwd delta", "varlen bwd dk/dv", "varlen bwd dq"."""
    import importlib

    from kernels.fused_attention import attention_config

    module = importlib.import_module(_VARLEN_MODULE)
    config_fn = config_fn or (lambda d, dtype, n, p: attention_config(d, dtype, seq_len=n, fp32_precision=p))
    kernels = [
        ("_varlen_attn_fwd", "varlen fwd", "fwd"),
        ("_varlen_attn_bwd_preprocess", "varlen bwd delta", "delta"),
        ("_varlen_attn_bwd_dkdv", "varlen bwd dk/dv", "dkdv"),
        ("_varlen_attn_bwd_dq", "varlen bwd dq", "dq"),
    ]
    specs, seen = [], set()
    for cap in capabilities:
        for d in head_dims:
            for dtype in dtypes:
                dtype = _torch_dtype(dtype)
                dtype_name = str(dtype).removeprefix("torch.")
                for n in seq_lens:
                    for precision in fp32_precisions(dtype_name, precisions):
                        cfg = config_fn(d, dtype, n, precision)
                        for kernel, variant, which in kernels:
                            if n is not None and which != "fwd":
                                continue
                            launch = getattr(cfg, which)
                            consts = {"HEAD_DIM": d, "BLOCK_D": cfg.block_d, "BLOCK_M": launch.block_m}
                            if which != "delta":
                                consts["BLOCK_N"] = launch.block_n
                                consts["DOT_PRECISION"] = precision
                            if which == "fwd":
                                consts["ONE_KEY_TILE"] = n is not None and n <= launch.block_n
                            key = (cap, which, dtype_name, tuple(sorted(consts.items())), launch)
                            if key in seen:  # another length with the same tiles: one build
                                continue
                            seen.add(key)
                            sig, consts, div = _attention_signature(getattr(module, kernel), dtype_name, consts)
                            specs.append(KernelSpec(
                                kernel, _VARLEN_MODULE, sig, consts, div, launch.num_warps, launch.num_stages, cap,
                                {"dtype": dtype_name, "head_dim": d, "variant": variant, "seq_len": n or "long",
                                 "precision": precision, "block_m": launch.block_m, "block_n": launch.block_n},
                            ))
    return specs


# ----------------------------------------------------------------------------------------------
# The token-composition kernels as their launchers call them
# ----------------------------------------------------------------------------------------------

_COMPOSITION_MODULE = "kernels.token_composition"


def composition_kernel_specs(
    capabilities=(80, 90), dims=(768,), dtypes=("float16", "bfloat16"), order_dtype="int64", coarse_grid=(8, 6),
) -> list[KernelSpec]:
    """The four kernels of kernels.token_composition as the launchers call them (default configs,
    every gradient asked for, contiguous tensors of embedding dim `dim`: row strides equal to D,
    multiples of 16 when D is). `dtypes` and `order_dtype`: torch dtypes or their names."""
    import importlib

    from kernels.token_composition import composition_config

    module = importlib.import_module(_COMPOSITION_MODULE)
    pointer_types = {"order_ptr": triton_type(order_dtype), "cu_seqlens_ptr": "i32",
                     "d_fine_pos_ptr": "fp32"}  # fine positions accumulate in a float32 buffer (atomics)
    specs = []
    for cap in capabilities:
        for dim in dims:
            for dtype in dtypes:
                dtype = _torch_dtype(dtype)
                cfg = composition_config(dim, dtype, interpreter=False)
                kernels = {
                    "_compose_fwd_kernel": {"COARSE_W": coarse_grid[1], "BLOCK_ROWS": cfg.block_rows,
                                            "BLOCK_D": cfg.block_d},
                    "_compose_bwd_fine_kernel": {"COARSE_W": coarse_grid[1], "BLOCK_SLOTS": cfg.block_slots,
                                                 "BLOCK_D": cfg.block_d, "FINE_EMBED_GRAD": True,
                                                 "FINE_POS_GRAD": True, "REUSE_GRAD": True},
                    "_compose_bwd_coarse_kernel": {"BLOCK_ROWS": cfg.block_rows, "BLOCK_D": cfg.block_d},
                    "_compose_bwd_keypoint_kernel": {"BLOCK_SAMPLES": cfg.block_samples, "BLOCK_D": cfg.block_d},
                }
                for name, consts in kernels.items():
                    sig, consts, div = kernel_signature(getattr(module, name), triton_type(dtype), consts,
                                                        pointer_types=pointer_types, divisible=dim % 16 == 0)
                    specs.append(KernelSpec(
                        name, _COMPOSITION_MODULE, sig, consts, div, cfg.num_warps, 1, cap,
                        {"variant": name.removeprefix("_compose_").removesuffix("_kernel"),
                         "dtype": str(dtype).removeprefix("torch."), "dim": dim,
                         "block_m": cfg.block_rows if name != "_compose_bwd_fine_kernel" else cfg.block_slots,
                         "block_n": cfg.block_d},
                    ))
    return specs


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = ["capability", "variant", "dtype", "precision", "head_dim", "seq_len", "block_m", "block_n",
            "num_warps", "num_stages", "registers", "ctas_per_sm", "spill_stores", "spill_loads", "stack",
            "shared_mem", "tensor_cores"]
    heads = ["sm", "kernel", "dtype", "dot", "d", "N", "BM", "BN", "warps", "stages", "regs", "CTA/SM",
             "spill st", "spill ld", "stack", "smem B", "mma"]
    table = [heads] + [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help="internal: read specs as JSON on stdin")
    parser.add_argument("--caps", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    args = parser.parse_args(argv)
    if args.worker:
        specs = [KernelSpec(**d) for d in json.loads(sys.stdin.read())]
        print(json.dumps(_measure_in_process(specs)))
        return
    rows = measure_specs(attention_kernel_specs(tuple(args.caps), tuple(args.head_dims), tuple(args.dtypes)))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
