"""SHaRPose: a coarse low-resolution pass, early exit on predicted quality, and a sparse
high-resolution pass over the patches the keypoints attend to (Wang et al., AAAI 2024).

Behaviour follows the released implementation (docs/design.md, section 2): token order
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

from kernels import ops_for
from sharpose.models.base import PoseModel
from sharpose.models.heads import QualityHead, TokenHeatmapDecoder
from sharpose.models.inputs import check_images, is_tracing
from sharpose.models.layers import Block, Mlp, PatchEmbed, ScoreSpec, drop_path_rates, init_vit_weights
from sharpose.models.output import PoseOutput
from sharpose.models.selection import (
    TokenBudget,
    fine_children,
    plan_fine_stage,
    rank_patches,
    refined_rows,
    selected_slots,
)

SCORE_KEYPOINTS = ("released", "all")


SHaRPoseOutput = PoseOutput  # the name before both models shared one output type


@dataclass
class CoarseStage:
    """What a forward computes before its host sync, every tensor with the batch dimension first."""

    embed: torch.Tensor  # (B, N_c, D) coarse input embeddings; unselected patches keep them in the fine stage
    quality: torch.Tensor  # (B,) predicted heatmap quality Q
    heatmaps: torch.Tensor  # (B, K, h, w) coarse heatmaps
    patch_scores: torch.Tensor  # (B, N_c) float32 keypoint-attention score of each coarse patch
    order: torch.Tensor  # (B, N_c) coarse patches, best first (`rank_patches`)
    counts: torch.Tensor  # (B,) patches the budget selects per sample, at most k_max
    reuse: torch.Tensor  # (B, k_max, D) reuse-block outputs of each sample's top k_max patches
    fine_embed: torch.Tensor  # (B, k_max, 4, D) patch embeddings of their fine children, child-minor


class ReuseBlock(nn.Module):
    """LN + MLP mapping a coarse output token onto the fine tokens of its patch."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class SHaRPose(PoseModel):
    output_names = ("heatmaps", "coarse_heatmaps", "quality", "patch_scores", "selected")
    has_early_exit = True

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
        token_budget: str = "fixed",
        tau: float = 0.7,
        k_min: int = 1,
        k_max: int | None = None,
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
        self.token_budget = TokenBudget(token_budget, k_max or self.num_selected, k_min, tau)

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
        init_vit_weights(self, (self.coarse_pos_embed, self.fine_pos_embed, self.quality_token, self.keypoint_tokens))

    @property
    def score_grid(self) -> tuple[int, int]:
        return self.coarse_grid

    @property
    def position_grids(self) -> dict[str, tuple[tuple[int, int], int]]:
        return {"coarse_pos_embed": (self.coarse_grid, 0), "fine_pos_embed": (self.fine_grid, 0)}

    @property
    def score_rows(self) -> tuple[int, int]:
        """Query rows whose attention forms the patch score (Eq. 7). Row 0 is the quality token;
        the released code sums rows 1..16, i.e. the first 16 of the 17 keypoints."""
        last = self.num_keypoints if self.score_keypoints == "released" else self.num_keypoints + 1
        return (1, last)

    @property
    def refines_everyone(self) -> bool:
        """Every sample runs the fine stage (training, or no exit threshold)."""
        return self.training or self.qp_threshold == math.inf

    @property
    def capturable(self) -> bool:
        """The forward needs no host-device sync, so it can be recorded in a CUDA graph: every sample
        refines and the fixed token budget fixes all sizes (the input finiteness check is skipped
        while capturing)."""
        return self.refines_everyone and self.token_budget.mode == "fixed"

    def forward(self, images: torch.Tensor) -> SHaRPoseOutput:
        check_images(images, self.in_chans, self.input_size, "SHaRPose", check_finite=False)
        coarse = self.coarse_stage(images)
        refined = self.refine_mask(coarse.quality)
        num_refined, total = self.fetch_sizes(images, refined, coarse.counts)  # the one host sync
        rows = None if self.refines_everyone else refined_rows(refined, num_refined)
        heatmaps = coarse.heatmaps
        if num_refined:
            fine_heatmaps = self.fine_stage(coarse, rows, total)
            heatmaps = fine_heatmaps if rows is None else heatmaps.index_copy(0, rows, fine_heatmaps)
        return self.outputs(coarse, refined, heatmaps)

    def coarse_stage(self, images: torch.Tensor) -> CoarseStage:
        """Everything before the host sync, all of static shape: the coarse stage, the patch ranking,
        and the fine stage's per-patch work on every sample's top k_max patches, so that the device
        keeps busy while the host waits for the number of refined samples. A sample that then exits
        has paid for that work too: 2.5% of the coarse stage's multiply-adds for the Base model at
        256x192 (0.14 of 5.77 GFLOPs), 2.0% at 384x288; fvcore's count, which traces away unused
        results, leaves it out."""
        B, K, k_max = images.shape[0], self.num_keypoints, self.token_budget.k_max
        coarse_embed = self.embed(F.interpolate(images, size=self.coarse_size, mode="bilinear"), self.coarse_pos_embed)
        x = torch.cat([self.quality_token.expand(B, -1, -1), self.keypoint_tokens.expand(B, -1, -1), coarse_embed], 1)
        visual_cols = (1 + K, 1 + K + self.num_coarse)
        score_terms = []
        for i, block in enumerate(self.blocks):
            if i in self.ema_weights:  # Eq. 6-7: this layer's weighted keypoint-to-patch attention
                x, term = block(x, score=ScoreSpec(self.score_rows, visual_cols, self.ema_weights[i]))
                score_terms.append(term)
            else:
                x = block(x)
        x = self.norm(x)
        # Eq. 7: the layers' terms summed over layers, heads and slots, once per forward
        patch_scores = torch.cat(score_terms, dim=1).sum(dim=(1, 2))
        order = rank_patches(patch_scores)
        top = order[:, :k_max]
        # the reuse block on the top k_max parents and the patch embedding of their fine children: a
        # sample selects a prefix of these whatever its budget, and whether it refines is not known yet
        parents = x[:, 1 + K :].gather(1, top[..., None].expand(-1, -1, x.shape[-1]))
        batch_row = torch.arange(B, device=images.device)[:, None].expand(B, k_max).flatten()
        return CoarseStage(
            embed=coarse_embed,
            quality=self.quality_head(x[:, 0]),
            heatmaps=self.decoder(x[:, 1 : 1 + K]),
            patch_scores=patch_scores,
            order=order,
            counts=self.token_budget.counts(patch_scores, order),
            reuse=self.reuse(parents),
            fine_embed=self.embed_fine_children(images, batch_row, top.flatten()).unflatten(0, (B, k_max)),
        )

    def refine_mask(self, quality: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the samples that run the fine stage. At inference a sample whose predicted quality
        reaches the threshold exits after the coarse stage (early exit)."""
        if self.refines_everyone:
            return torch.ones_like(quality, dtype=torch.bool)
        return quality < self.qp_threshold

    def fetch_sizes(self, images: torch.Tensor, refined: torch.Tensor, counts: torch.Tensor) -> tuple[int, int]:
        """The forward's one host-device synchronisation: how many samples refine, how many patches
        they select in all (adaptive budget) and whether the input was finite, fetched together.
        Returns (number of refined samples, number of selected patches)."""
        everyone = self.refines_everyone
        pending = []
        if not everyone:
            pending.append(refined.sum())
        if self.token_budget.mode == "adaptive":
            pending.append((counts * refined).sum())
        check_finite = not (images.is_cuda and torch.cuda.is_current_stream_capturing()) and not is_tracing()
        if check_finite:
            pending.append(torch.isfinite(images).all().long())
        fetched = torch.stack(pending).tolist() if pending else []
        if check_finite and not fetched.pop():
            raise ValueError("SHaRPose got images containing NaN or inf values")
        num_refined = images.shape[0] if everyone else fetched.pop(0)
        total = fetched.pop(0) if fetched else num_refined * self.token_budget.k_max
        return num_refined, total

    def outputs(self, coarse: CoarseStage, refined: torch.Tensor, heatmaps: torch.Tensor) -> SHaRPoseOutput:
        """The forward's result from its parts; `selected` holds -1 past a sample's count and on exited rows."""
        rank = torch.arange(self.token_budget.k_max, device=refined.device)
        chosen = refined[:, None] & (rank < coarse.counts[:, None])
        selected = torch.where(chosen, coarse.order[:, : self.token_budget.k_max], -1)
        return SHaRPoseOutput(heatmaps, coarse.heatmaps, coarse.quality, refined, coarse.patch_scores, selected)

    def embed(self, images: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(images) + pos_embed

    def fine_stage(self, coarse: CoarseStage, rows: torch.Tensor | None, total_selected: int) -> torch.Tensor:
        """Fine-stage heatmaps (R, K, h, w) of batch rows `rows` (None: every row), run as packed
        variable-length sequences laid out as docs/design.md, section 3 says; `total_selected` is the
        number of patches they select in all.

        Only the selected patches' fine children are patch-embedded and only their parents go through
        the reuse block (both done in `coarse_stage`); the unselected patches keep their coarse input
        embedding (released behaviour). Each row is its own sequence: no row's result depends on the
        others, so a row may appear more than once.
        """
        ops = ops_for(self.backend, coarse.embed.device)
        K, k_max = self.num_keypoints, self.token_budget.k_max
        plan = plan_fine_stage(rows, coarse.order, coarse.counts, total_selected, K, self.num_coarse, k_max)
        sample, rank = selected_slots(plan.counts, total_selected)
        batch_row = sample if rows is None else rows[sample]
        reuse = coarse.reuse[batch_row, rank]
        dtype = reuse.dtype  # the compute dtype under autocast; parameters may be float32
        tokens = ops.compose_tokens(
            self.keypoint_tokens[0].to(dtype),
            coarse.fine_embed[batch_row, rank].flatten(0, 1).to(dtype),
            self.fine_pos_embed[0].to(dtype),
            reuse,
            (coarse.embed if rows is None else coarse.embed.index_select(0, rows)).to(dtype),
            plan.order,
            plan.packed.cu_seqlens,
            self.coarse_grid,
            plan.packed.max_seqlen,
        )
        for block in self.blocks:
            tokens = block(tokens, plan.packed)
        keypoint_rows = plan.packed.cu_seqlens[:-1, None].long() + torch.arange(K, device=tokens.device)
        return self.decoder(self.norm(tokens[keypoint_rows]))

    def embed_fine_children(self, images: torch.Tensor, batch_row: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (S, 4, D) of the fine children of the given coarse patches, child-minor:
        the conv of the patch embedding, applied as a matmul to just these pixel patches."""
        P, (hf, wf) = self.patch_embed.patch_size, self.fine_grid
        fy, fx = fine_children(patch, self.coarse_grid)
        pixels = images.unflatten(2, (hf, P)).unflatten(4, (wf, P))[batch_row[:, None], :, fy, :, fx, :]
        proj = self.patch_embed.proj
        return F.linear(pixels.flatten(2), proj.weight.flatten(1), proj.bias)
