"""ViT building blocks shared by SHaRPose and ViTPose (timm-style, backend-aware attention)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from kernels import ops_for


@dataclass
class PackedSequences:
    """Variable-length sequences packed along the first dimension of a (T, D) tensor."""

    cu_seqlens: torch.Tensor  # (R + 1,) int32 cumulative lengths
    max_seqlen: int  # static upper bound on every length
    sequence_of_token: torch.Tensor  # (T,) long: which sequence each row belongs to

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.shape[0] - 1


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor, packed: PackedSequences | None = None) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        if packed is None:
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        else:  # one draw per sequence, shared by its tokens
            mask = x.new_empty(packed.num_sequences, 1).bernoulli_(keep)[packed.sequence_of_token]
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchEmbed(nn.Module):
    """Non-overlapping (or padded, as ViTPose) patch projection: (B, C, H, W) -> (B, N, D)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, padding: int = 0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ScoreSpec(NamedTuple):
    """One layer's keypoint-attention score term (`kernels.reference.attention_with_score`): query
    rows `rows` attending to key columns `cols`, weighted by `weight`."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    weight: float


class Attention(nn.Module):
    """Multi-head self-attention whose core runs on the backend's `attention` op.

    With a `ScoreSpec`, the forward runs `attention_with_score` instead and returns
    (output, score term), without the caller ever holding the N x N map.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "reference") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, packed: PackedSequences | None = None, score: ScoreSpec | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        ops = ops_for(self.backend, x.device)
        if packed is not None:  # (T, C) tokens of variable-length sequences
            T, C = x.shape
            q, k, v = self.qkv(x).reshape(T, 3, self.num_heads, self.head_dim).unbind(1)
            out = ops.varlen_attention(q, k, v, packed.cu_seqlens, packed.max_seqlen)
            return self.proj(out.reshape(T, C))
        if score is None:
            return self.proj(self.merge_heads(ops.attention(*self.split_heads(x))))
        out, term = ops.attention_with_score(*self.split_heads(x), score.rows, score.cols, score_weight=score.weight)
        return self.proj(self.merge_heads(out)), term

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, H, N, d): strided views into the fused projection, no copies."""
        B, N, C = x.shape
        return self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    def merge_heads(out: torch.Tensor) -> torch.Tensor:
        """(B, H, N, d) -> (B, N, H d); free for the Triton ops' token-major outputs."""
        B, H, N, d = out.shape
        return out.transpose(1, 2).reshape(B, N, H * d)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
        backend: str = "reference",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, backend=backend)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, packed: PackedSequences | None = None, score: ScoreSpec | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The block's output; with a `ScoreSpec`, (output, the attention's score term)."""
        if score is None:
            attended, term = self.attn(self.norm1(x), packed), None
        else:
            attended, term = self.attn(self.norm1(x), score=score)
        x = x + self.drop_path(attended, packed)
        x = x + self.drop_path(self.mlp(self.norm2(x)), packed)
        return x if term is None else (x, term)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to `drop_path_rate` over the blocks."""
    return torch.linspace(0, drop_path_rate, depth).tolist()


def init_vit_weights(model: nn.Module, embeddings: tuple[nn.Parameter, ...]) -> None:
    """ViT initialisation: truncated normal (std 0.02) for linear weights and the learnt embeddings,
    zero biases, unit LayerNorms."""
    for p in embeddings:
        nn.init.trunc_normal_(p, std=0.02)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
