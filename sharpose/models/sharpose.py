"""SHaRPose: a coarse low-resolution pass, early exit on predicted quality, and a sparse
high-resolution pass over the patches the keypoints attend to (Wang et al., AAAI 2024).

Behaviour follows the released implementation (DESIGN.md section 1): token order
[quality, keypoints, patches], EMA of keypoint attention over layers depth//4 .. depth-1,
ceil(alpha * N_c) selected patches, a reuse block feeding coarse outputs into their 2x2 fine
children, unselected patches kept at their coarse input embedding, fresh keypoint tokens in the
fine stage, one shared decoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import BACKENDS
from sharpose.models.heads import QualityHead, TokenHeatmapDecoder
from sharpose.models.inputs import check_images
from sharpose.models.layers import Attention, Block, Mlp, PatchEmbed, drop_path_rates

SCORE_KEYPOINTS = ("released", "all")


@dataclass
class SHaRPoseOutput:
    heatmaps: torch.Tensor  # (B, K, h, w): fine-stage heatmaps where refined, coarse ones where the sample exited
    coarse_heatmaps: torch.Tensor  # (B, K, h, w)
    quality: torch.Tensor  # (B,) predicted heatmap quality Q
    refined: torch.Tensor  # (B,) bool: the sample ran the fine stage
    patch_scores: torch.Tensor  # (B, N_c) float32 keypoint-attention score of each coarse patch
    selected: torch.Tensor  # (B, k) long coarse-patch indices, best first; -1 on rows that exited


class ReuseBlock(nn.Module):
    """LN + MLP mapping a coarse output token onto the fine tokens of its patch."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class SHaRPose(nn.Module):
    # released checkpoint names (AnxQ/sharpose, mmpose layout) -> ours; the first matching rule applies
    released_key_map = (
        (r"^backbone\.pos_embed_list\.0$", "coarse_pos_embed"),
        (r"^backbone\.pos_embed_list\.1$", "fine_pos_embed"),
        (r"^backbone\.reuse_block\.0\.", "reuse.norm."),
        (r"^backbone\.reuse_block\.1\.", "reuse.mlp."),
        (r"^backbone\.quality_predictor\.norm\.", "quality_head.norm."),
        (r"^backbone\.quality_predictor\.mlp\.0\.", "quality_head.fc1."),
        (r"^backbone\.quality_predictor\.mlp\.3\.", "quality_head.fc2."),
        (r"^backbone\.quality_predictor\.mlp\.6\.", "quality_head.fc3."),
        (r"^keypoint_head\.heatmap_mlp\.0\.", "decoder.norm."),
        (r"^keypoint_head\.heatmap_mlp\.1\.", "decoder.fc1."),
        (r"^keypoint_head\.heatmap_mlp\.3\.", "decoder.norm2."),
        (r"^keypoint_head\.heatmap_mlp\.4\.", "decoder.fc2."),
        (r"^backbone\.", ""),
    )

    def __init__(
        self,
        input_size: tuple[int, int] = (256, 192),
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_keypoints: int = 17,
        alpha: float = 0.4,
        beta: float = 0.99,
        qp_threshold: float = 0.99,
        heatmap_size: tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        score_keypoints: str = "released",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        H, W = input_size
        if H % (2 * patch_size) or W % (2 * patch_size):
            raise ValueError(f"input_size {input_size} must be a multiple of 2 * patch_size = {2 * patch_size}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if score_keypoints not in SCORE_KEYPOINTS:
            raise ValueError(f"score_keypoints must be one of {SCORE_KEYPOINTS}, got {score_keypoints!r}")
        self.input_size = (H, W)
        self.in_chans = in_chans
        self.num_keypoints = num_keypoints
        self.alpha = alpha
        self.qp_threshold = qp_threshold
        self.score_keypoints = score_keypoints
        self.heatmap_size = tuple(heatmap_size) if heatmap_size is not None else (H // 4, W // 4)

        # the coarse stage sees the image at s_c = 0.5; each coarse patch covers 2x2 fine patches
        self.coarse_size = (H // 2, W // 2)
        self.coarse_grid = (H // (2 * patch_size), W // (2 * patch_size))
        self.fine_grid = (H // patch_size, W // patch_size)
        self.num_coarse = self.coarse_grid[0] * self.coarse_grid[1]
        self.num_fine = self.fine_grid[0] * self.fine_grid[1]
        self.num_selected = math.ceil(alpha * self.num_coarse)  # N_h; the released code rounds up

        # EMA of keypoint attention (Eq. 6) over layers depth//4 .. depth-1, starting from 0. It is
        # linear, so layer i contributes (1 - beta) * beta^(depth-1-i) times its own attention.
        self.ema_weights = {i: (1 - beta) * beta ** (depth - 1 - i) for i in range(depth // 4, depth)}

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.coarse_pos_embed = nn.Parameter(torch.zeros(1, self.num_coarse, embed_dim))
        self.fine_pos_embed = nn.Parameter(torch.zeros(1, self.num_fine, embed_dim))
        self.quality_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.keypoint_tokens = nn.Parameter(torch.zeros(1, num_keypoints, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rate, backend=backend)
            for rate in drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.reuse = ReuseBlock(embed_dim, mlp_ratio)
        self.quality_head = QualityHead(embed_dim)
        self.decoder = TokenHeatmapDecoder(embed_dim, self.heatmap_size)
        self.backend = backend
        self.init_weights()

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self._backend = backend
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = backend

    def init_weights(self) -> None:
        for p in (self.coarse_pos_embed, self.fine_pos_embed, self.quality_token, self.keypoint_tokens):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def score_rows(self) -> tuple[int, int]:
        """Query rows whose attention forms the patch score (Eq. 7). Row 0 is the quality token;
        the released code sums rows 1..16, i.e. the first 16 of the 17 keypoints."""
        last = self.num_keypoints if self.score_keypoints == "released" else self.num_keypoints + 1
        return (1, last)

    def forward(self, images: torch.Tensor) -> SHaRPoseOutput:
        check_images(images, self.in_chans, self.input_size, "SHaRPose")
        B, K = images.shape[0], self.num_keypoints

        # coarse stage
        coarse_embed = self.embed(F.interpolate(images, size=self.coarse_size, mode="bilinear"), self.coarse_pos_embed)
        x = torch.cat([self.quality_token.expand(B, -1, -1), self.keypoint_tokens.expand(B, -1, -1), coarse_embed], 1)
        patch_scores = torch.zeros(B, self.num_coarse, device=images.device, dtype=torch.float32)
        visual_cols = (1 + K, 1 + K + self.num_coarse)
        for i, block in enumerate(self.blocks):
            if i in self.ema_weights:  # Eq. 6-7: this layer's weighted keypoint-to-patch attention
                x = block(x, score=patch_scores, score_rows=self.score_rows, score_cols=visual_cols,
                          score_weight=self.ema_weights[i])
            else:
                x = block(x)
        x = self.norm(x)
        quality = self.quality_head(x[:, 0])
        coarse_heatmaps = self.decoder(x[:, 1 : 1 + K])
        coarse_out = x[:, 1 + K :]

        if self.training:  # every sample runs both stages
            refined = torch.ones(B, dtype=torch.bool, device=images.device)
            heatmaps, selected = self.fine_stage(images, coarse_embed, coarse_out, patch_scores)
        else:  # early exit: samples whose predicted quality reaches the threshold stop here
            refined = quality < self.qp_threshold
            rows = refined.nonzero().squeeze(1)
            heatmaps = coarse_heatmaps
            selected = torch.full((B, self.num_selected), -1, dtype=torch.long, device=images.device)
            if rows.numel():
                fine_heatmaps, chosen = self.fine_stage(
                    images[rows], coarse_embed[rows], coarse_out[rows], patch_scores[rows]
                )
                heatmaps = heatmaps.index_copy(0, rows, fine_heatmaps)
                selected = selected.index_copy(0, rows, chosen)
        return SHaRPoseOutput(heatmaps, coarse_heatmaps, quality, refined, patch_scores, selected)

    def embed(self, images: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(images) + pos_embed

    def fine_stage(
        self, images: torch.Tensor, coarse_embed: torch.Tensor, coarse_out: torch.Tensor, patch_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fine-stage heatmaps of the samples given, and the coarse patches chosen for them (best first)."""
        order = patch_scores.argsort(dim=1, descending=True)
        tokens = self.compose_fine_tokens(images, coarse_embed, coarse_out, order)
        for block in self.blocks:
            tokens = block(tokens)
        heatmaps = self.decoder(self.norm(tokens)[:, : self.num_keypoints])
        return heatmaps, order[:, : self.num_selected]

    def compose_fine_tokens(
        self, images: torch.Tensor, coarse_embed: torch.Tensor, coarse_out: torch.Tensor, order: torch.Tensor
    ) -> torch.Tensor:
        """The fine-stage sequence [keypoint tokens, fine tokens of the selected patches, unselected
        coarse input embeddings], built as the released code does: every coarse output through the
        reuse block, upsampled to the fine grid and added to the full fine patch embedding."""
        B, D = coarse_out.shape[0], coarse_out.shape[2]
        (hc, wc), (hf, wf) = self.coarse_grid, self.fine_grid
        reuse = self.reuse(coarse_out).transpose(1, 2).reshape(B, D, hc, wc)
        reuse = F.interpolate(reuse, size=(hf, wf), mode="nearest").flatten(2).transpose(1, 2)
        fine_tokens = self.embed(images, self.fine_pos_embed) + reuse
        chosen, rest = order[:, : self.num_selected], order[:, self.num_selected :]
        children = fine_children(chosen, self.coarse_grid, self.fine_grid)
        return torch.cat(
            [
                self.keypoint_tokens.expand(B, -1, -1),
                batch_gather(fine_tokens, children),
                batch_gather(coarse_embed, rest),
            ],
            dim=1,
        )


def fine_children(coarse_index: torch.Tensor, coarse_grid: tuple[int, int], fine_grid: tuple[int, int]) -> torch.Tensor:
    """Fine-grid indices of the 2x2 children of each coarse patch: (B, k) -> (B, 4k), child-major."""
    (_, wc), (_, wf) = coarse_grid, fine_grid
    top_left = (coarse_index // wc) * 2 * wf + (coarse_index % wc) * 2
    return torch.cat([top_left + dy * wf + dx for dy in (0, 1) for dx in (0, 1)], dim=1)


def batch_gather(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), index (B, k) -> (B, k, D)."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
