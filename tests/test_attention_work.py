"""The keypoint-attention score's cost, counted under the Triton interpreter.

At the coarse stage's shapes (N = 66 / 126, d = 64, 12 heads, fp16; score rows 1..16, columns
18..N) the score may add at most 5% to the forward's tile-product multiply-adds and 10% to its
exponentials, counted through the public `kernels.attention` (bench/attention_work.py prints the
same counts). Both lengths fit one key tile, where the score reuses the probabilities the forward
already holds, so the expected overhead is zero.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from attention_work import COARSE_LENGTHS, attention_work, count_interpreter_work  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="counts the Triton interpreter's operations")


@pytest.mark.parametrize("n", COARSE_LENGTHS)
def test_score_overhead_within_bounds_at_coarse_shapes(n):
    base, scored = attention_work(n, with_score=False), attention_work(n, with_score=True)
    assert base["dot_macs"] > 0 and base["exp_elements"] > 0
    assert scored["dot_macs"] <= 1.05 * base["dot_macs"], (base, scored)
    assert scored["exp_elements"] <= 1.10 * base["exp_elements"], (base, scored)


def test_counter_sees_a_second_pass():
    """The counter does count the score's extra work where there is some: past one key tile the
    score recomputes the logits of the keypoint rows' block (N = 200, one 64-row block, 64-wide
    key tiles: 3 more QK^T tile products and their exponentials)."""
    from kernels.fused_attention import attention, attention_with_score

    q, k, v = torch.randn(3, 1, 1, 200, 64).to(torch.float16).unbind(0)
    with count_interpreter_work() as base:
        attention(q, k, v)
    with count_interpreter_work() as scored:
        attention_with_score(q, k, v, (1, 17), (18, 200))
    assert scored["dot_macs"] - base["dot_macs"] == 3 * 64 * 64 * 64
    assert scored["exp_elements"] - base["exp_elements"] == 3 * 64 * 64


def test_counter_counts_every_program():
    """Counts scale with the batch: every program of the launch goes through the counter."""
    one, three = attention_work(66, False, batch=1), attention_work(66, False, batch=3)
    assert three == {key: 3 * value for key, value in one.items()}
