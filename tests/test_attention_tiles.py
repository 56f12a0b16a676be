"""Forward tiles chosen per sequence length: the rules, the cached lookup, and fp32's dot precision
following PyTorch's matmul setting. Interpreter parity of every configuration the GPU would launch
at the model's lengths is tested beside each kernel (test_fused_attention.py, test_varlen_attention.py)."""
from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.fused_attention import ONE_TILE_MAX_KEYS, attention, attention_config


def cuda_config(d, dtype, n):
    return attention_config(d, dtype, interpreter=False, seq_len=n)


def test_short_sequences_take_one_key_tile():
    """16-bit types (fp32's one-tile forward is limited by registers: tests/test_aot.py)."""
    for dtype in (torch.float16, torch.bfloat16):
        for n in range(1, ONE_TILE_MAX_KEYS + 1):
            fwd = cuda_config(32, dtype, n).fwd
            assert fwd.block_n >= n and fwd.block_n == max(16, 1 << (n - 1).bit_length()), (dtype, n, fwd)
            assert fwd.num_stages == 1  # no loop to pipeline
    assert cuda_config(64, torch.float16, 66).fwd.block_n == 128  # the coarse stage, Base
    assert cuda_config(64, torch.float16, ONE_TILE_MAX_KEYS + 1).fwd.block_n < ONE_TILE_MAX_KEYS + 1


def test_query_block_pads_fewest_rows():
    """fp16, d 64: 16-row blocks only with one key tile (a longer loop wants fatter tiles)."""
    for n in (66, 100, 126, 137, 224, 287, 450):
        fwd = cuda_config(64, torch.float16, n).fwd
        padded = -(-n // fwd.block_m) * fwd.block_m
        blocks = (16, 32, 64) if n <= ONE_TILE_MAX_KEYS else (32, 64)
        assert fwd.block_m in blocks and all(padded <= -(-n // m) * m for m in blocks), (n, fwd)


def test_config_lookup_is_cached():
    from kernels.fused_attention import _attention_config

    first = attention_config(64, torch.float16, seq_len=66)
    hits = _attention_config.cache_info().hits
    # lengths 65..80 share one bucket: one cached object
    assert all(attention_config(64, torch.float16, seq_len=n) is first for n in range(65, 81))
    assert _attention_config.cache_info().hits == hits + 16


@pytest.fixture
def matmul_precision():
    saved = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(saved)


def test_fp32_dot_precision_follows_torch(matmul_precision):
    for setting, expected in (("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")):
        matmul_precision(setting)
        assert attention_config(64, torch.float32, seq_len=66).dot_precision == expected
        assert attention_config(64, torch.float16, seq_len=66).dot_precision == "ieee"  # 16-bit: tensor cores anyway


def test_tf32_setting_runs(device, matmul_precision):
    """With "high" the kernels get input_precision="tf32" (the interpreter computes in fp32 anyway;
    on a GPU TF32 keeps 10 mantissa bits: errors as torch's own TF32 matmul, about 1e-3)."""
    matmul_precision("high")
    q, k, v = torch.randn(3, 2, 2, 66, 32, device=device).unbind(0)
    out = attention(q, k, v)
    expected = reference.attention(q.cpu().double(), k.cpu().double(), v.cpu().double())
    assert (out.cpu().double() - expected).abs().max().item() <= 1e-2
