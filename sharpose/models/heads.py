"""Output heads: SHaRPose's token heatmap decoder and quality predictor, ViTPose's decoders."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TokenHeatmapDecoder(nn.Module):
    """Keypoint tokens (B, K, D) -> heatmaps (B, K, h, w), one token per heatmap.

    LN -> Linear(D, hw) when D >= hw / 4; otherwise LN -> Linear(D, hw/2) -> GELU -> LN -> Linear(hw/2, hw),
    as the released SHaRPose head decides.
    """

    def __init__(self, embed_dim: int, heatmap_size: tuple[int, int]) -> None:
        super().__init__()
        self.heatmap_size = heatmap_size
        pixels = heatmap_size[0] * heatmap_size[1]
        self.two_layer = embed_dim < pixels // 4
        self.norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, pixels // 2 if self.two_layer else pixels)
        if self.two_layer:
            self.norm2 = nn.LayerNorm(pixels // 2)
            self.fc2 = nn.Linear(pixels // 2, pixels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.fc1(self.norm(tokens))
        if self.two_layer:
            x = self.fc2(self.norm2(F.gelu(x)))
        return x.unflatten(-1, self.heatmap_size)


class QualityHead(nn.Module):
    """Eq. 4: the heatmap quality Q predicted from the quality token.

    Released code: LN -> Linear -> GELU -> Linear -> GELU -> Linear(D, 1) -> GELU (a GELU, not a sigmoid).
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, embed_dim)
        self.fc2 = nn.Linear(embed_dim, embed_dim)
        self.fc3 = nn.Linear(embed_dim, 1)

    def forward(self, quality_token: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(self.norm(quality_token)))
        x = F.gelu(self.fc2(x))
        return F.gelu(self.fc3(x)).squeeze(-1)


class ClassicDecoder(nn.Module):
    """ViTPose's classic decoder: 2 x (deconv 4x4 stride 2 -> BN -> ReLU), then a 1x1 conv."""

    def __init__(self, in_channels: int, num_keypoints: int, channels: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in in (in_channels, channels):
            layers += [
                nn.ConvTranspose2d(c_in, channels, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_keypoints, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(features))


class SimpleDecoder(nn.Module):
    """ViTPose's simple decoder: ReLU -> bilinear x4 -> 3x3 conv."""

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, kernel_size=3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(F.relu(features), scale_factor=4, mode="bilinear", align_corners=False)
        return self.final_layer(x)
