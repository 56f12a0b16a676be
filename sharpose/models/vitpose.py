"""ViTPose (Xu et al., NeurIPS 2022), the baseline: a plain ViT and a heatmap decoder.

Matches the released ViTAE-Transformer/ViTPose backbone: padded patch embedding (192 tokens at
256x192), a learnt position embedding whose extra (pretrained cls) slot is added to every patch
token, pre-LN blocks with LayerNorm eps 1e-6, a final LayerNorm.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sharpose.models.base import PoseModel
from sharpose.models.heads import ClassicDecoder, SimpleDecoder
from sharpose.models.inputs import check_images
from sharpose.models.layers import Block, PatchEmbed, drop_path_rates, init_vit_weights
from sharpose.models.output import PoseOutput

DECODERS = {"classic": ClassicDecoder, "simple": SimpleDecoder}


class ViTPose(PoseModel):
    # released checkpoint names (mmpose layout) -> ours; the first matching rule applies
    released_key_map = (
        (r"^backbone\.last_norm\.", "norm."),
        (r"^backbone\.", ""),
        (r"^keypoint_head\.", "decoder."),
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
        drop_path_rate: float = 0.0,
        decoder: str = "classic",
    ) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; expected one of {tuple(DECODERS)}")
        self.input_size = tuple(input_size)
        self.in_chans = in_chans
        self.num_keypoints = num_keypoints
        self.grid = (input_size[0] // patch_size, input_size[1] // patch_size)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, padding=2)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rate, norm_eps=1e-6)
            for rate in drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder = DECODERS[decoder](embed_dim, num_keypoints)
        init_vit_weights(self, (self.pos_embed,))

    @property
    def position_grids(self) -> dict[str, tuple[tuple[int, int], int]]:
        return {"pos_embed": (self.grid, 1)}  # the extra slot is added to every patch token

    def forward(self, images: torch.Tensor) -> PoseOutput:
        """Images (B, C, H, W) -> heatmaps (B, K, H/4, W/4), the only field of the output filled."""
        check_images(images, self.in_chans, self.input_size, "ViTPose")
        x = self.patch_embed(images)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return PoseOutput(self.decoder(x.transpose(1, 2).unflatten(2, self.grid)))
