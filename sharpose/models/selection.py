"""Which coarse patches each sample refines, and the packed layout of the fine-stage sequences
(docs/design.md, section 3).

Everything here stays on the device: the only host-device synchronisation of a SHaRPose forward
is where the batch splits (how many samples refine and how many patches they select in total).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sharpose.models.layers import PackedSequences

TOKEN_BUDGETS = ("fixed", "adaptive")


@dataclass
class TokenBudget:
    """How many coarse patches a sample refines.

    "fixed": k = ceil(alpha * N_c) for every sample (the paper and the released code).
    "adaptive": the fewest top-scoring patches holding at least a fraction `tau` of the sample's total
    keypoint-attention score, clipped to [k_min, k_max]. A sample whose keypoints look at few patches
    then costs fewer fine tokens; one with diffuse attention gets up to k_max. The fine-stage sequences
    get different lengths, which the packed (variable-length) layout runs without padding.
    """

    mode: str
    k_max: int
    k_min: int = 1
    tau: float = 0.7

    def __post_init__(self) -> None:
        if self.mode not in TOKEN_BUDGETS:
            raise ValueError(f"token_budget must be one of {TOKEN_BUDGETS}, got {self.mode!r}")
        if not 0 <= self.k_min <= self.k_max:
            raise ValueError(f"need 0 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")

    def counts(self, patch_scores: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """(B,) long: patches selected per sample, given scores and their best-first `order`."""
        B = patch_scores.shape[0]
        if self.mode == "fixed":
            return torch.full((B,), self.k_max, dtype=torch.long, device=patch_scores.device)
        ranked = patch_scores.gather(1, order)
        mass = ranked.cumsum(1) / ranked.sum(1, keepdim=True).clamp_min(torch.finfo(ranked.dtype).tiny)
        return ((mass < self.tau).sum(1) + 1).clamp(self.k_min, self.k_max)


@dataclass
class FinePlan:
    """The refined samples' fine-stage layout."""

    rows: torch.Tensor | None  # (R,) batch rows that refine, or None when every row does
    order: torch.Tensor  # (R, N_c) their coarse patches, best first
    counts: torch.Tensor  # (R,) patches selected per sample
    total_selected: int  # S_p = counts.sum(), known on the host
    packed: PackedSequences  # fine-stage sequences of length K + N_c + 3 * count


def plan_fine_stage(
    rows: torch.Tensor | None,
    order: torch.Tensor,
    counts: torch.Tensor,
    total_selected: int,
    num_keypoints: int,
    num_coarse: int,
    max_selected: int,
) -> FinePlan:
    if rows is not None:
        order, counts = order.index_select(0, rows), counts.index_select(0, rows)
    R = order.shape[0]
    # each selected patch becomes 4 fine tokens in place of its 1 coarse token
    lengths = num_keypoints + num_coarse + 3 * counts
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    total_tokens = R * (num_keypoints + num_coarse) + 3 * total_selected
    sequence_of_token = torch.repeat_interleave(torch.arange(R, device=order.device), lengths, output_size=total_tokens)
    packed = PackedSequences(cu_seqlens, num_keypoints + num_coarse + 3 * max_selected, sequence_of_token)
    return FinePlan(rows, order, counts, total_selected, packed)


def rank_patches(patch_scores: torch.Tensor) -> torch.Tensor:
    """(B, N_c) coarse patches of each sample, best first: higher score first, the lower patch index
    first among equal scores.

    The position of patch i is counted, not sorted: the patches scoring higher, plus those scoring the
    same with a lower index. The tie rule is then part of the arithmetic, so identical scores give
    the same selection on every run and device (an unstable sort may order equal keys either way),
    positions are distinct (a permutation, written by an exact scatter), and the result exports to
    ONNX, whose Sort has no stable mode. N_c^2 comparisons per sample, with N_c at most a few hundred.
    A NaN score ranks as -inf (NaN compares unequal to everything, which would break the count).
    """
    B, N = patch_scores.shape
    index = torch.arange(N, device=patch_scores.device)
    scores = torch.where(patch_scores.isnan(), -math.inf, patch_scores)
    mine, other = scores[:, :, None], scores[:, None, :]
    earlier = index[None, :] < index[:, None]  # (i, j): j comes before i on equal scores
    position = ((other > mine) | ((other == mine) & earlier)).sum(2)
    return torch.empty_like(position).scatter_(1, position, index.expand(B, N))


def refined_rows(refined: torch.Tensor, num_refined: int) -> torch.Tensor:
    """(num_refined,) batch rows whose `refined` flag is set, in batch order, without nonzero()'s own
    sync (num_refined comes from the forward's one host read)."""
    return refined.logical_not().to(torch.uint8).argsort(stable=True)[:num_refined]


def selected_slots(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(total,) sample and rank within that sample's selection of every selected patch, sample-major:
    sample i contributes ranks 0 .. counts[i] - 1. No host sync (`total` = counts.sum() is known)."""
    sample = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts, output_size=total)
    rank = torch.arange(total, device=counts.device) - (counts.cumsum(0) - counts)[sample]
    return sample, rank


def pack_selected(order: torch.Tensor, counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten each sample's selected patches (the first counts[i] of order[i]) into (total,) sample
    and patch indices, sample-major, without a host sync."""
    sample, rank = selected_slots(counts, total)
    return sample, order[sample, rank]


def fine_children(coarse_patch: torch.Tensor, coarse_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine-grid (row, column) of the 2x2 children of coarse patches: (S,) -> two (S, 4), child c = 2 dy + dx.

    The child offsets come from arange on the device: a tensor built from a Python list would be a
    host-to-device copy on every call (a sync, and impossible inside a CUDA graph)."""
    wc = coarse_grid[1]
    child = torch.arange(4, device=coarse_patch.device)
    return (coarse_patch // wc * 2)[:, None] + child // 2, (coarse_patch % wc * 2)[:, None] + child % 2
