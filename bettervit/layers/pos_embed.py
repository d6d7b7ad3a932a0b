"""Resampling a learned absolute position embedding to another token grid (ViT fine-tuning at a new resolution,
Dosovitskiy et al. 2021, sec. 3.2): the embedding is read as an image of width C and interpolated."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def resample_abs_pos_embed(
    pos: Tensor,
    new_size: Sequence[int],
    old_size: Sequence[int] | None = None,
    num_prefix_tokens: int = 0,
    mode: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """(1, prefix + h*w, C) raster position embedding -> (1, prefix + H*W, C) for ``new_size`` = (H, W).

    ``old_size`` defaults to a square grid. Prefix tokens (class token) are kept as they are. Interpolation runs in
    float32 with ``align_corners=False``; ``antialias`` (default True, timm's ``resample_abs_pos_embed``
    convention, used by every family at run time and on load) matters only when shrinking.
    """
    n = pos.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"position embedding with {n} grid tokens is not a square grid; pass old_size")
        old_size = (side, side)
    # new_size may be symbolic under torch.export (dynamic height / width): no int(), and no early-out on equality,
    # which would specialise the exported graph to the example's size (resampling to the same size is an identity)
    old_size, new_size = tuple(int(s) for s in old_size), tuple(new_size)
    if old_size[0] * old_size[1] != n:
        raise ValueError(f"position embedding has {n} grid tokens, not {old_size[0]}x{old_size[1]}")
    if not torch.compiler.is_exporting() and old_size == new_size:
        return pos
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    C = pos.shape[-1]
    grid = grid.float().reshape(1, *old_size, C).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = F.interpolate(grid, size=new_size, mode=mode, align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], C).to(pos.dtype)  # (1, H*W, C)
    return torch.cat([prefix, grid], dim=1) if num_prefix_tokens else grid


class ResampledPosEmbedCache(dict):
    """Position embeddings resampled to run-time token grids, kept for inference.

    A plain attribute of the model (not in its state dict), keyed by (grid, device, dtype); each entry is checked
    against the parameter's version counter and storage, so ``load_state_dict``, optimizer steps and ``.to()``
    refresh it (models also clear it in ``_apply``). With autograd recording for the parameter, while compiling
    or exporting, and for inference tensors (no version counter) the table is recomputed on every call, so
    gradients and traced graphs see the resampling.
    """

    def get_or_resample(self, pos: Tensor, grid: Sequence[int], resample: Callable[[Tensor], Tensor]) -> Tensor:
        """``resample(pos)`` for the token ``grid``, from the cache when it is still valid."""
        traced = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if traced or (torch.is_grad_enabled() and pos.requires_grad) or pos.is_inference():
            return resample(pos)
        key = (tuple(grid), pos.device, pos.dtype)
        stamp = (pos._version, pos.data_ptr())
        hit = super().get(key)
        if hit is None or hit[0] != stamp:
            hit = self[key] = (stamp, resample(pos.detach()))
        return hit[1]
