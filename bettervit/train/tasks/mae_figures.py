"""The MAE paper's reconstruction figure (He et al. 2022, Fig. 2): rows masked input (hidden units grey) |
reconstruction (visible patches pasted from the input) | original, written as one PNG with Pillow."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def is_figure_epoch(epoch: int, epochs: int) -> bool:
    """Reconstruction snapshots: the first epoch and about ten more, evenly spaced (not one per epoch)."""
    step = max(1, epochs // 10)
    return epoch == 0 or (epoch + 1) % step == 0


@torch.no_grad()
def save_mae_figure(model: nn.Module, x: Tensor, path: Path, mean, std, mask_ratio: float | None,
                    write: bool) -> None:
    """The figure for the fixed normalised validation batch ``x``, each image at least 128 px; video: those three
    rows for each clip, one column per reconstructed frame (see :func:`video_figure_rows`). The forward runs on
    every rank (FSDP needs it); only ``write`` saves. The mask is the same every time (seed 0) and the caller's
    RNG state is left as it was."""
    from ...pretrain.mae import patch_visibility, reconstruct_images

    was = model.training
    model.eval()
    g = torch.random.get_rng_state()
    torch.manual_seed(0)  # the same mask every time, and the training RNG left untouched
    out = model(x, mask_ratio=mask_ratio)
    rec = reconstruct_images(model, x, out)
    torch.random.set_rng_state(g)
    model.train(was)
    if not write:
        return
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    visible = patch_visibility(model, out.mask, x.shape[-2:])  # (B, 1, H, W); video (B, 1, t, H, W)
    shown = lambda t: t.float() * std + mean  # noqa: E731 - back to [0, 1] pixels
    if x.ndim == 5:
        save_image_grid(video_figure_rows(x, rec, visible, model.config.patch_stride_t, shown), path, min_side=96)
        return
    save_image_grid([shown(x) * visible + 0.5 * (1 - visible), shown(rec), shown(x)], path, min_side=128)


def video_figure_rows(x: Tensor, rec: Tensor, visible: Tensor, stride_t: int, shown: Callable[[Tensor], Tensor],
                      max_frames: int = 8) -> list[Tensor]:
    """Rows of the video MAE figure: per clip, masked input | reconstruction | original, over up to ``max_frames``
    of its target frames (the first of every ``stride_t`` frames: what the model reconstructs).
    ``x`` (B, 3, T, H, W), ``rec`` (B, 3, t, H, W), ``visible`` (B, 1, t, H, W) -> rows of (frames, 3, H, W)."""
    frames = x[:, :, ::stride_t]  # (B, 3, t, H, W)
    t = min(frames.shape[2], max_frames)
    as_row = lambda v: v[:, :t].transpose(0, 1)  # noqa: E731 - (3, t, H, W) -> (t, 3, H, W)
    rows = []
    for i in range(x.shape[0]):
        orig, vis = shown(as_row(frames[i])), as_row(visible[i])
        rows += [orig * vis + 0.5 * (1 - vis), shown(as_row(rec[i])), orig]
    return rows


def save_image_grid(rows: list[Tensor], path: Path, min_side: int = 0, gap: int = 2) -> None:
    """Each row a batch (B, 3, H, W) in [0, 1]; written as one PNG with Pillow. Images are enlarged (nearest, an
    integer factor) to at least ``min_side`` pixels and separated by ``gap`` white pixels."""
    import numpy as np
    from PIL import Image

    h = rows[0].shape[-2]
    scale = max(1, -(-min_side // h))  # ceil: at least min_side
    tiles = [[F.interpolate(img[None].float().clamp(0, 1), scale_factor=scale, mode="nearest")[0] for img in r]
             for r in rows]
    H, W = tiles[0][0].shape[-2:]
    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    grid = torch.ones(3, n_rows * (H + gap) - gap, n_cols * (W + gap) - gap)  # white background
    for i, r in enumerate(tiles):
        for j, t in enumerate(r):
            grid[:, i * (H + gap): i * (H + gap) + H, j * (W + gap): j * (W + gap) + W] = t.cpu()
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(arr).save(tmp)
    tmp.replace(path)
