"""HieraDet: the Hiera image encoder of SAM 2 (Ravi et al., "SAM 2: Segment Anything in Images and Videos", 2024).

SAM 2's image encoder is an MAE-pretrained Hiera (Ryali et al., "Hiera: A Hierarchical Vision Transformer without
the Bells-and-Whistles", ICML 2023) re-cut for dense prediction at high resolution (896-1024 px):

- *Windowed attention instead of mask-unit attention.* Every block attends inside non-overlapping square windows of
  the token grid (the stage's ``window_spec``: 8, 4, 14, 7 tokens for the small models; 8, 4, 16, 8 for large),
  except a few *global* blocks spread over stage 3 (``global_att_blocks``), which attend over the whole grid, as in
  ViTDet. Where a window does not tile the grid, the normalised map is zero-padded to whole windows; the padded
  tokens take part in attention unmasked (as in SAM 2 and timm) and are cropped afterwards.
- *Query pooling* as in Hiera: the first block of stages 2-4 max-pools its queries (and its projected residual)
  2x2, halving the grid and doubling the width. Like Hiera's mask-unit switch, the window size lags the stage
  boundary by one block: the pooling block still uses the previous stage's window, which pooling halves.
- *Windowed absolute position embedding* (Bolya et al., "Window Attention is Bugged: How not to Interpolate
  Position Embeddings", 2023): a small *background* embedding (7x7 or 14x14) is interpolated bicubically to the
  token grid, and a *window* embedding of one first-stage window (8x8) is tiled over it. Only the background is
  interpolated, so the window pattern the attention learned stays exact at any input size.

Any input whose sides are multiples of 32 runs (patch stride 4 x the 8-token window the window embedding tiles);
no parameter depends on the input size. Parameter names equal timm's ``sam2_hiera_*`` (timm 1.0.31,
``hieradet_sam2.py``); the official SAM 2 / SAM 2.1 checkpoints (``image_encoder.trunk.*``) and image Hiera
checkpoints are mapped on load (see the key map at the end).

The file reads top to bottom: config -> windows and pooling -> attention and block -> position embedding, patch
embedding -> model (on the trunk of models/hiera.py: stages, block runner, head) -> variants -> checkpoint key map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import DropPath
from ..registry import register_model
from .base import img_size_hw
from .hiera import HieraTrunk, HieraTrunkConfig, StageBlock, official_hiera_key


@dataclass
class HieraDetConfig(HieraTrunkConfig):
    """Hiera's trunk fields (see HieraTrunkConfig) plus the windows and the windowed position embedding."""

    window_spec: tuple[int, ...] = (8, 4, 14, 7)  # attention window (tokens per side) per stage
    global_att_blocks: tuple[int, ...] = (12, 16, 20)  # blocks with global attention
    global_pos_size: tuple[int, int] = (7, 7)  # background position embedding grid
    init_values: float | None = None  # LayerScale init (None: no LayerScale, as in SAM 2)
    img_size: int | tuple[int, int] = 1024  # the default input size (pretrained_cfg); any multiple of 32 runs
    num_classes: int = 0  # SAM 2's encoder has no classifier: 0 gives the pooled, normed features

    @property
    def input_multiple(self) -> int:
        """Input sides must be multiples of this: the window embedding tiles the stride-``patch_stride`` grid in
        steps of ``window_spec[0]``, and each pooling needs an even grid."""
        return self.patch_stride * math.lcm(self.window_spec[0], self.q_stride**self.q_pool)

    def validate(self) -> None:
        self.validate_trunk()
        if len(self.window_spec) != len(self.depths):
            raise ValueError(f"window_spec needs one size per stage ({len(self.depths)}), got {self.window_spec}")
        m = self.input_multiple
        if any(s <= 0 or s % m for s in img_size_hw(self.img_size)):
            raise ValueError(f"HieraDet img_size must be positive multiples of {m}, got {self.img_size}")


# ---------------------------------------------------------------------------------------------------------------
# Windows and pooling (all maps channels-last: (B, H, W, C))
# ---------------------------------------------------------------------------------------------------------------
def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B * nH * nW, window, window, C), windows row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C)


def window_unpartition(x: Tensor, window: int, hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nH * nW, window, window, C) -> (B, H, W, C) for ``hw`` = (H, W)."""
    H, W = hw
    C = x.shape[-1]
    x = x.view(-1, H // window, W // window, window, window, C)  # (B, nH, nW, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def pad_to_windows(x: Tensor, window: int) -> Tensor:
    """Zero-pad (B, H, W, C) at the bottom and right to whole windows."""
    H, W = x.shape[1:3]
    pad_h, pad_w = -H % window, -W % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def max_pool(x: Tensor, stride: int) -> Tensor:
    """``stride`` x ``stride`` max pooling of a channels-last map (B, H, W, C) -> (B, H // s, W // s, C), a trailing
    odd row / column dropped (as ``nn.MaxPool2d(ceil_mode=False)``)."""
    B, H, W, C = x.shape
    h, w = H // stride, W // stride
    if (h * stride, w * stride) != (H, W):
        x = x[:, : h * stride, : w * stride]
    # two single-dim maxes (window rows, then window columns) instead of one amax over dims (2, 4): the same values,
    # and on the CPU 30x faster (a reduction over two strided dims is not vectorised)
    x = x.reshape(B, h, stride, w, stride * C).amax(dim=2)  # (B, h, w, s * C): max over the window's rows
    return x.view(B, h, w, stride, C).amax(dim=3)  # (B, h, w, C): then over its columns


# ---------------------------------------------------------------------------------------------------------------
# Attention and block
# ---------------------------------------------------------------------------------------------------------------
class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over a channels-last map (a window or the whole grid), the queries optionally
    max-pooled first: (N, h, w, C) -> (N, h / s, w / s, C_out)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int | None = None) -> None:
        super().__init__()
        self.dim_out, self.num_heads, self.q_stride = dim_out, num_heads, q_stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        N, h, w, _ = x.shape
        qkv = self.qkv(x).view(N, h * w, 3, self.num_heads, -1)  # (N, hw, 3, nh, hd)
        q, k, v = qkv.unbind(2)  # each (N, hw, nh, hd)
        if self.q_stride:  # pool the queries over the map, heads and channels together
            q = max_pool(q.reshape(N, h, w, -1), self.q_stride)  # (N, h', w', nh * hd)
            h, w = q.shape[1:3]
            q = q.reshape(N, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (N, nh, h'w', hd)
        x = x.transpose(1, 2).reshape(N, h, w, self.dim_out)
        return self.proj(x)


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (Touvron et al. 2021, CaiT); parameter ``gamma`` as in timm."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class MultiScaleBlock(StageBlock):
    """Pre-norm transformer block on a channels-last map, window or global attention.

    At a stage's first block the width changes (``proj`` maps the normed input to ``dim_out``) and, with
    ``q_stride``, the queries and the residual are max-pooled: (B, H, W, C) -> (B, H / s, W / s, C_out). The
    window then shrinks by the same stride inside the attention (e.g. 8x8 windows give 4x4 outputs).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        *,
        window_size: int = 0,
        q_stride: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        init_values: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, dim_out, MultiScaleAttention(dim, dim_out, num_heads, q_stride), mlp_ratio, eps)
        self.window_size, self.q_stride = window_size, q_stride
        self.ls1 = LayerScale(dim_out, init_values) if init_values is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ls2 = LayerScale(dim_out, init_values) if init_values is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:  # the residual changes width (and grid, when pooling) with the stage
            x = self.proj(x_norm)
            if self.q_stride:
                x = max_pool(x, self.q_stride)
        H, W = x.shape[1:3]  # the output grid
        if self.window_size:
            win = pad_to_windows(x_norm, self.window_size)  # (B, Hp, Wp, C)
            Hp, Wp = win.shape[1:3]
            y = self.attn(window_partition(win, self.window_size))  # (B * nW, w', w', C_out)
            s = self.q_stride or 1  # pooling shrinks each window, and the padded grid, by s
            y = window_unpartition(y, self.window_size // s, (Hp // s, Wp // s))  # (B, Hp', Wp', C_out)
            if y.shape[1:3] != (H, W):
                y = y[:, :H, :W]  # drop the padding
        else:
            y = self.attn(x_norm)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


# ---------------------------------------------------------------------------------------------------------------
# Position embedding, patch embedding
# ---------------------------------------------------------------------------------------------------------------
def windowed_pos_embed(background: Tensor, window: Tensor, hw: tuple[int, int]) -> Tensor:
    """Windowed absolute position embedding for an (h, w) token grid -> (1, h, w, C).

    background (1, C, bh, bw): interpolated bicubically (align_corners=False, no antialias) to (h, w);
    window (1, C, wh, ww): tiled (h / wh) x (w / ww) times and added. ``h``, ``w`` must be multiples of the window.
    """
    h, w = hw
    pos = F.interpolate(background, size=(h, w), mode="bicubic", align_corners=False)  # (1, C, h, w)
    pos = pos + window.tile(1, 1, h // window.shape[-2], w // window.shape[-1])
    return pos.permute(0, 2, 3, 1)  # (1, h, w, C)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution: (B, C_in, H, W) -> (B, H/4, W/4, C) channels-last."""

    def __init__(self, cfg: HieraDetConfig) -> None:
        super().__init__()
        k, s, p = cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=s, padding=p)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------
class HieraDet(HieraTrunk):
    """SAM 2's Hiera image encoder as a timm-style backbone: Hiera's trunk (``HieraTrunk``: stages, query pooling,
    block runner, head, pruning) with windowed attention (:class:`MultiScaleBlock`) on channels-last maps and the
    windowed position embedding (:func:`windowed_pos_embed`).

    ``forward_features`` returns the last stage's map channels-last (B, H/32, W/32, C) as timm's; the four stage
    outputs (strides 4, 8, 16, 32: the inputs of SAM 2's FPN neck) come from ``forward_intermediates`` or
    ``create_model(..., features_only=True)``.
    """

    head_pool_dim = (1, 2)  # the head pools channels-last maps (B, H, W, C)
    pos_embed_names = ("pos_embed", "pos_embed_window")

    def _make_embeddings(self) -> None:
        cfg = self.config
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.global_pos_size))  # background
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, cfg.window_spec[0], cfg.window_spec[0]))

    def _make_block(self, i: int, stage: int, dim: int, dim_out: int, heads: int, pool: bool,
                    drop_path: float) -> nn.Module:
        """Windowed attention with the stage's ``window_spec`` window, global in ``global_att_blocks``."""
        cfg = self.config
        window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
        if window and pool and window % cfg.q_stride:
            raise ValueError(f"block {i} pools windows of {window} tokens: must be a multiple of {cfg.q_stride}")
        return MultiScaleBlock(dim, dim_out, heads, window_size=window, q_stride=cfg.q_stride if pool else None,
                               mlp_ratio=cfg.mlp_ratio, drop_path=drop_path, init_values=cfg.init_values,
                               eps=cfg.norm_eps)

    def _init_weights(self) -> None:
        """As timm: truncated normal (std 0.02) for embeddings and linear weights, zero biases, each block's output
        projections scaled by 1 / sqrt(2 * layer), the classifier by ``head_init_scale``."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_window, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for i, blk in enumerate(self.blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))
            if isinstance(self.head.fc, nn.Linear):
                self.head.fc.weight.mul_(self.config.head_init_scale)
                self.head.fc.bias.mul_(self.config.head_init_scale)

    # --- encoder ------------------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """Images (B, C_in, H, W) -> tokens (B, H/4, W/4, C) with the windowed position embedding added."""
        self.check_input(x, self.config.input_multiple)
        x = self.patch_embed(x)  # (B, h, w, C)
        return x + windowed_pos_embed(self.pos_embed, self.pos_embed_window, (x.shape[1], x.shape[2]))

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> the last block's map (B, H/32, W/32, C_last), channels-last."""
        return self._run_blocks(self.embed(x))[0]

    def forward_intermediates(
        self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False, stop_early: bool = True,
        output_fmt: str = "NCHW", intermediates_only: bool = False, coarse: bool = True,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (``coarse``, the default: 4 levels, strides 4-32) or block outputs, as timm's.

        indices: None = all levels, int n = the last n, a sequence = those levels (negative from the end).
        stop_early (timm's default for this model: True): stop after the deepest requested level, so the returned
        final map is that level's. ``norm`` is not supported (the encoder has no norm over its maps), as in timm.
        Returns ``(final NHWC map, [maps])``, or the maps only with ``intermediates_only``.
        """
        channels_last = self._check_intermediate_args(norm, output_fmt, ("NCHW", "NHWC"))
        take, last = self._intermediate_blocks(indices, stop_early, coarse)
        x, outs = self._run_blocks(self.embed(x), take, last)
        maps = outs if channels_last else [o.permute(0, 3, 1, 2) for o in outs]
        return maps if intermediates_only else (x, maps)

    # --- training helpers ---------------------------------------------------------------------------------------
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups: the stem (embeddings) and one group per block."""
        return dict(stem=r"^pos_embed|pos_embed_window|patch_embed", blocks=[(r"^blocks\.(\d+)", None)])

    # --- checkpoints --------------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return convert_checkpoint(state_dict, self)


# ---------------------------------------------------------------------------------------------------------------
# Variants (timm's names and configs; default weights: timm's copies of SAM 2's image encoders, tags fb_r896 /
# fb_r1024, and of SAM 2.1's, tags *_2pt1)
# ---------------------------------------------------------------------------------------------------------------
@register_model(HieraDet, weights="timm/sam2_hiera_tiny.fb_r896", family="hieradet")
def sam2_hiera_tiny() -> HieraDetConfig:
    """SAM 2 Hiera-T image encoder (27M): stages 1-2-7-2, widths 96-768, global attention in blocks 5, 7, 9."""
    return HieraDetConfig(depths=(1, 2, 7, 2), global_att_blocks=(5, 7, 9), img_size=896)


@register_model(HieraDet, weights="timm/sam2_hiera_small.fb_r896", family="hieradet")
def sam2_hiera_small() -> HieraDetConfig:
    """SAM 2 Hiera-S image encoder (34M): stages 1-2-11-2, global attention in blocks 7, 10, 13."""
    return HieraDetConfig(depths=(1, 2, 11, 2), global_att_blocks=(7, 10, 13), img_size=896)


@register_model(HieraDet, weights="timm/sam2_hiera_base_plus.fb_r896", family="hieradet")
def sam2_hiera_base_plus() -> HieraDetConfig:
    """SAM 2 Hiera-B+ image encoder (69M): stages 2-3-16-3, widths 112-896, 14x14 background embedding."""
    return HieraDetConfig(embed_dim=112, num_heads=2, global_pos_size=(14, 14), img_size=896)


@register_model(HieraDet, weights="timm/sam2_hiera_large.fb_r1024", family="hieradet")
def sam2_hiera_large() -> HieraDetConfig:
    """SAM 2 Hiera-L image encoder (212M): stages 2-6-36-4, widths 144-1152, windows 8-4-16-8."""
    return HieraDetConfig(
        embed_dim=144, num_heads=2, depths=(2, 6, 36, 4), global_att_blocks=(23, 33, 43), window_spec=(8, 4, 16, 8),
        img_size=1024,
    )


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint key map
# ---------------------------------------------------------------------------------------------------------------
# timm (sam2_hiera_*): keys equal ours.
# official SAM 2 / SAM 2.1 (sam2*_hiera_*.pt): {"model": {...}} (unwrapped by bettervit.weights); the image encoder's
#   trunk under "image_encoder.trunk.", its MLP as "mlp.layers.0/1"; everything else (FPN neck, prompt encoder, mask
#   decoder, memory modules) is dropped. The trunk has no head norm: the model's own (fresh) one is kept.
# image Hiera (timm hiera_*_224 or official hiera-transformer, same block keys): the raster position embedding
#   (1, h*w, C) is split into a background and a window embedding by hiera_pos_embed_to_windowed; the classifier is
#   dropped by the loader when its size differs; official names ("norm.", "head.projection.") are mapped.
_SAM2_TRUNK = "image_encoder.trunk."


def hiera_pos_embed_to_windowed(
    pos: Tensor, grid: tuple[int, int], window: int, background: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """An image Hiera's raster position embedding (1, h*w, C) on an (h, w) token grid -> (background (1, C, bh, bw),
    window (1, C, window, window)) whose windowed embedding (:func:`windowed_pos_embed`) approximates it.

    The background is the mean of each (h / bh) x (w / bw) cell; the window embedding is then, at each position in
    the window, the mean over all windows of what the interpolated background leaves (the least-squares window
    given that background). Exact when the embedding is a window pattern plus a per-cell constant that bicubic
    interpolation reproduces (e.g. a constant); in general an initialisation to fine-tune from.
    """
    h, w = grid
    if pos.ndim != 3 or pos.shape[1] != h * w:
        raise ValueError(f"expected a (1, {h * w}, C) position embedding for a {h}x{w} grid, got {tuple(pos.shape)}")
    if h % window or w % window:
        raise ValueError(f"grid {h}x{w} must be a multiple of the window {window}")
    C = pos.shape[-1]
    full = pos.float().reshape(1, h, w, C).permute(0, 3, 1, 2)  # (1, C, h, w)
    bkg = F.adaptive_avg_pool2d(full, background)  # (1, C, bh, bw)
    rest = full - F.interpolate(bkg, size=(h, w), mode="bicubic", align_corners=False)
    win = rest.reshape(1, C, h // window, window, w // window, window).mean(dim=(2, 4))  # (1, C, window, window)
    return bkg.to(pos.dtype), win.to(pos.dtype)


def convert_checkpoint(state_dict: dict[str, Tensor], model: HieraDet) -> dict[str, Tensor]:
    """timm, official SAM 2 / SAM 2.1 (full model or trunk) or image Hiera state dict -> this model's keys."""
    if any(k.startswith(_SAM2_TRUNK) for k in state_dict):  # a whole SAM 2 model: keep the encoder's trunk
        state_dict = {k[len(_SAM2_TRUNK):]: v for k, v in state_dict.items() if k.startswith(_SAM2_TRUNK)}
    out = {}
    for k, v in state_dict.items():
        k = k.replace(".mlp.layers.0.", ".mlp.fc1.").replace(".mlp.layers.1.", ".mlp.fc2.")
        out[official_hiera_key(k)] = v  # official image Hiera's classifier and norm
    pos = out.get("pos_embed")
    if pos is not None and pos.ndim == 3 and "pos_embed_window" not in out:  # an image Hiera's raster embedding
        side = math.isqrt(pos.shape[1])
        cfg = model.config
        out["pos_embed"], out["pos_embed_window"] = hiera_pos_embed_to_windowed(
            pos, (side, side), cfg.window_spec[0], tuple(cfg.global_pos_size)
        )
    own = model.state_dict()
    for k in ("head.norm.weight", "head.norm.bias"):  # SAM 2's trunk has no head norm: keep the model's
        if k in own and k not in out:
            out[k] = own[k].clone()
    return out
