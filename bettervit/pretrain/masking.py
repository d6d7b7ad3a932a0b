"""BEiT-style block-wise masking (Bao et al. 2022), as EVA and EVA-02 use for masked image modeling.

Mask convention: **True = masked** (the patch is hidden from the student and its feature must be predicted).
Masks are (h, w) per image, flattened row-major to (B, h*w) to line up with the patch tokens.

The mask is grown by rectangles: each rectangle has an area drawn uniformly in [min_patches, remaining budget] and
an aspect ratio drawn log-uniformly in [min_aspect, max_aspect] (0.3 to 1/0.3), placed uniformly at random; its
not-yet-masked patches are added if that does not overshoot the budget. Rectangles keep coming until about
``ratio`` of the patches (40% for EVA-02) are masked, so masks are blobs rather than salt-and-pepper, which makes
the task harder than predicting a patch from its immediate neighbours.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def block_mask(
    grid: tuple[int, int],
    ratio: float = 0.4,
    min_patches: int = 16,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One (h, w) bool mask, True = masked, with round(ratio * h * w) masked patches at most (usually exactly)."""
    h, w = grid
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    target = int(round(ratio * h * w))
    log_aspect = (math.log(min_aspect), math.log(max_aspect or 1.0 / min_aspect))
    mask = torch.zeros(h, w, dtype=torch.bool)

    def rand() -> float:
        return torch.rand((), generator=generator).item()

    count = 0
    while count < target:
        budget = target - count
        lo = min(min_patches, budget)
        added = 0
        for _ in range(10):  # up to 10 tries to place one rectangle
            area = lo + (budget - lo) * rand()
            aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * rand())
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if not (0 < bh < h and 0 < bw < w):
                continue
            top = int(rand() * (h - bh + 1))
            left = int(rand() * (w - bw + 1))
            new = bh * bw - int(mask[top:top + bh, left:left + bw].sum())
            if 0 < new <= budget:
                mask[top:top + bh, left:left + bw] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def batch_block_mask(
    batch: int, grid: tuple[int, int], ratio: float = 0.4, generator: torch.Generator | None = None,
    device: torch.device | str | None = None, **kw,
) -> Tensor:
    """(batch, h*w) bool masks, True = masked, one independent block mask per image (see ``block_mask``)."""
    masks = [block_mask(grid, ratio, generator=generator, **kw).flatten() for _ in range(batch)]
    return torch.stack(masks).to(device)
