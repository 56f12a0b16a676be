"""pytest-benchmark timings of the CPU reference attention at the coarse stage's shape.

Disabled as benchmarks by default (addopts has --benchmark-disable): each then runs once as a
plain test. `pytest tests/test_bench_attention.py --benchmark-enable` times them.
bench/bench_attention.py compares the Triton kernel with SDPA on a GPU.
"""
from __future__ import annotations

import pytest
import torch

from kernels import reference

B, H, N, d = 4, 12, 66, 32  # coarse stage at 256x192: 1 quality + 17 keypoint + 48 patch tokens


@pytest.fixture
def qkv():
    x = torch.randn(B, N, 3 * H * d)
    qkv = x.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def test_bench_reference_sdpa(benchmark, qkv):
    q, k, v = qkv
    out = benchmark(reference.attention, q, k, v)
    assert out.shape == (B, H, N, d)


def test_bench_reference_with_score(benchmark, qkv):
    q, k, v = qkv
    out, score = benchmark(reference.attention_with_score, q, k, v, (1, 17), (18, N), score_weight=0.01)
    assert out.shape == (B, H, N, d)
    assert score.sum() > 0
