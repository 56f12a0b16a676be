"""The plain-PyTorch references themselves, against the most direct formulation."""
import pytest
import torch
import torch.nn.functional as F

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
    T, H, d = sum(lengths), 3, 8
    q, k, v = (torch.randn(T, H, d, requires_grad=True) for _ in range(3))
    cu_seqlens = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    out = reference.varlen_attention(q, k, v, cu_seqlens, max_seqlen)
    expected = per_sequence_sdpa(q, k, v, lengths)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    if T:
        grad = torch.randn_like(out)
        ours = torch.autograd.grad(out, (q, k, v), grad)
        theirs = torch.autograd.grad(expected, (q, k, v), grad)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
