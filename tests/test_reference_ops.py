"""The plain-PyTorch references themselves, against the most direct formulation."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_as_accurate_as_torch
from kernels import reference


def per_sequence_sdpa(q, k, v, lengths):
    bounds = torch.tensor([0] + lengths).cumsum(0).tolist()
    pieces = [
        F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v))).transpose(0, 1)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(pieces) if pieces else q.new_zeros(0, *q.shape[1:])


@pytest.mark.parametrize("lengths,max_seqlen", [
    ([5, 1, 9, 3], 9),   # ragged: padded batch with a key mask
    ([5, 1, 9, 3], 16),  # a loose bound
    ([7, 7, 7], 7),      # equal lengths: the plain-batch path
    ([4], 4),
    ([], 8),
])
def test_varlen_attention_is_attention_within_each_sequence(lengths, max_seqlen):
    """Two float32 computations in different orders (a masked padded batch vs one SDPA per
    sequence): the reference may err at most twice as much as per-sequence SDPA against the
    float64 result (FlashAttention's criterion, tests/helpers.py)."""
    T, H, d = sum(lengths), 3, 8
    q, k, v = (torch.randn(T, H, d, requires_grad=True) for _ in range(3))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    cu_seqlens = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    out = reference.varlen_attention(q, k, v, cu_seqlens, max_seqlen)
    theirs = per_sequence_sdpa(q, k, v, lengths)
    exact = per_sequence_sdpa(q64, k64, v64, lengths)
    assert_as_accurate_as_torch(out, exact, theirs, "out")
    if T:
        grad = torch.randn_like(out)
        ours = torch.autograd.grad(out, (q, k, v), grad)
        theirs = torch.autograd.grad(theirs, (q, k, v), grad)
        exact = torch.autograd.grad(exact, (q64, k64, v64), grad.double())
        for name, a, b, c in zip(("dq", "dk", "dv"), ours, exact, theirs):
            assert_as_accurate_as_torch(a, b, c, name)
