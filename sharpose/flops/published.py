"""Published figures (papers) and counts of the released code, for side-by-side tables and checks.

Released-code figures are fvcore counts of AnxQ/sharpose and ViTAE-Transformer/ViTPose
(docs/design.md, section 5); paper figures from SHaRPose (AAAI 2024) Tables 1 and 6.
"""
from __future__ import annotations

from typing import Any

# name: (params of the released code, GFLOPs both stages, GFLOPs of a sample exiting after the coarse stage)
RELEASED_SHARPOSE = {
    "sharpose_small_256x192": (28_484_737, 4.843, 1.640),
    "sharpose_small_384x288": (48_516_097, 10.842, 3.718),
    "sharpose_base_256x192": (94_116_097, 17.060, 5.802),
    "sharpose_base_384x288": (118_543_489, 32.713, 11.975),
}

# (name, decoder): (params in millions, GFLOPs), docs/design.md section 5. Its "simple" row counts a 1x1 final
# conv; the released config (final_conv_kernel=3), mmpose's head and HF's VitPoseSimpleDecoder use 3x3,
# which adds 768 * 17 * 8 weights and, on the 64x48 heatmap, 64 * 48 * 768 * 17 * 8 multiply-adds.
RELEASED_VITPOSE = {
    ("vitpose_small_256x192", "classic"): (24.29, 5.59),
    ("vitpose_base_256x192", "classic"): (89.99, 18.53),
    ("vitpose_small_384x288", "classic"): (24.38, 13.54),
    ("vitpose_base_384x288", "classic"): (90.18, 43.61),
    ("vitpose_base_256x192", "simple"): (85.81, 17.17),
}

# name: (params in millions, GFLOPs) as printed in the SHaRPose paper
PAPER = {
    "sharpose_small_256x192": (28.4, 4.9),
    "sharpose_small_384x288": (48.3, 11.0),
    "sharpose_base_256x192": (93.9, 17.1),
    "sharpose_base_384x288": (118.1, 32.9),
    "vitpose_small_256x192": (None, 5.7),
    "vitpose_base_256x192": (None, 18.6),
    "vitpose_base_384x288": (None, 44.1),
}

# paper Table 6, (name, alpha): (released code under fvcore, paper) GFLOPs
ALPHA_SWEEP = {
    ("sharpose_base_256x192", 0.3): (15.72, 15.8),
    ("sharpose_base_256x192", 0.4): (17.06, 17.1),
    ("sharpose_base_256x192", 0.5): (18.14, 18.2),
    ("sharpose_base_256x192", 1.0): (24.72, 24.9),
    ("sharpose_base_384x288", 0.3): (32.71, 32.9),
    ("sharpose_base_384x288", 0.5): (38.66, 38.9),
}


def published_gflops(name: str, overrides: dict[str, Any], refine: bool) -> float | None:
    """The released code's GFLOPs per image for a named default configuration (`refine`: both
    stages, else a sample exiting after the coarse stage; ViTPose: its classic decoder), or None
    when the configuration is overridden or has no released count."""
    if overrides:
        return None
    if name in RELEASED_SHARPOSE:
        return RELEASED_SHARPOSE[name][1 if refine else 2]
    if (name, "classic") in RELEASED_VITPOSE:
        return RELEASED_VITPOSE[(name, "classic")][1]
    return None
