"""Hiera: A Hierarchical Vision Transformer without the Bells-and-Whistles (Ryali et al., ICML 2023).

Hiera is a plain ViT made hierarchical with one trick only: *query pooling*. A stage starts by max-pooling the
queries (and the residual) 2x2, so the token grid halves and the width doubles, four stages in all. No relative
position bias, no shifted windows, no convolutions in the blocks: MAE pretraining teaches the model the spatial
biases those modules used to hard-code, and without them the model is simpler and faster.

Attention is *mask-unit attention* in the first two stages (each 8x8-token mask unit, 32x32 pixels, attends only
to itself, the unit shrinking with each pooling) and global attention afterwards. The switch lags the stage
boundary by one block: the first block of stage 3 still attends inside (now 2x2-token) mask units while it pools.

Token order (the "unroll", see :func:`unroll`) makes both pooling and mask units cheap: tokens are stored so that a
mask unit is a contiguous run of tokens, and inside it the four members of every 2x2 pooling window sit one
quarter of the unit apart. Pooling is then ``view(..., 4, n/4, C).amax``, mask-unit attention is plain batched
attention over (B * units, tokens-per-unit), and MAE can drop masked units by indexing whole runs.

Any input whose sides are multiples of 32 (one mask unit) runs, square or not; the position embedding is resampled
to the input's grid. The model API (forward_intermediates, feature_info, prune / reset) follows timm's Hiera.

Video (the paper's Kinetics models, ``hiera_*_16x224``; ``HieraConfig.num_frames > 0``) is the same model over clips
(B, C, T, H, W): a 3x7x7 stride-2x4x4 patch conv, a separable position embedding (spatial + temporal, the official
names) and mask units of 1x8x8 tokens, so the blocks are unchanged; see the token-order note above ``unroll``.

The file reads top to bottom: config -> token order -> attention -> block -> the trunk shared with HieraDet
(``HieraTrunk``) -> model -> variants -> checkpoint key map. Parameter names equal timm's (``hiera_*_224``); the official ``hiera-transformer`` names are mapped on load
(video: timm has no video Hiera; the official names, which are ours but for the head, likewise).
One forward per block, for every backend; the CPU inference kernels are a separate pass (bettervit/optimize/hiera.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import POOL_TYPES, DropPath, Mlp, NormClassifierHead, ResampledPosEmbedCache, check_pool_type
from ..layers.pos_embed import resample_abs_pos_embed
from ..registry import register_model, register_variant
from .base import Backbone, feature_take_indices, img_size_hw


@dataclass
class HieraTrunkConfig:
    """The fields every Hiera shares (image and video Hiera, SAM 2's HieraDet); names are timm's."""

    embed_dim: int = 96  # width of stage 1; multiplied by dim_mul at each stage
    num_heads: int = 1  # heads of stage 1; multiplied by head_mul at each stage
    depths: tuple[int, ...] = (2, 3, 16, 3)  # blocks per stage
    # the size the model is built for: it sets the stored position-embedding grid (Hiera) or the default input
    # size (HieraDet). Other multiples of 32 run at run time (see each model's pos_embed_for / embed)
    img_size: int | tuple[int, int] = 224
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"  # pooling before the head: "avg", "max", "avgmax" or "" (none: per-position logits)
    drop_rate: float = 0.0  # dropout before the classifier (timm's drop_rate)
    drop_path_rate: float = 0.0  # stochastic depth of the last block; linear from 0 over the blocks
    q_pool: int = 3  # number of stage transitions that pool (3 for classifiers, 2 for MAE encoders)
    q_stride: int = 2  # pooling stride per axis
    dim_mul: float = 2.0
    head_mul: float = 2.0
    patch_kernel: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    head_init_scale: float = 0.001
    stages: tuple[int, ...] | None = None  # older name of depths; when given it sets depths

    def __post_init__(self) -> None:
        if self.stages is not None:
            self.depths, self.stages = tuple(self.stages), None
        for name in ("depths", "img_size"):  # e.g. lists from a JSON / YAML config
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))

    @property
    def stage_ends(self) -> list[int]:
        """Index of the last block of every stage."""
        return [sum(self.depths[: i + 1]) - 1 for i in range(len(self.depths))]

    def validate_trunk(self) -> None:
        if not 0 <= self.q_pool < len(self.depths):
            raise ValueError(f"q_pool must be in [0, {len(self.depths) - 1}], got {self.q_pool}")
        check_pool_type(self.global_pool)


@dataclass
class HieraConfig(HieraTrunkConfig):
    mask_unit_size: int = 8  # tokens per mask-unit side; must equal q_stride ** (len(depths) - 1)
    mask_unit_attn: tuple[bool, ...] = (True, True, False, False)  # per stage: mask-unit (True) or global
    head_dropout: float | None = None  # older name of drop_rate; when given it sets drop_rate
    # Video (the paper's Kinetics models, sec. 4): num_frames > 0 builds the video model. The patch embed is a 3-D
    # conv (patch_kernel_t x k x k, stride patch_stride_t x s x s), the position embedding is separable (spatial +
    # temporal) and mask units are 1 x 8 x 8 tokens: pooling and mask units never cross frames (temporal q_stride 1,
    # as every official video model). 0 = the image model.
    num_frames: int = 0
    patch_kernel_t: int = 3
    patch_stride_t: int = 2
    patch_padding_t: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_dropout is not None:
            self.drop_rate, self.head_dropout = self.head_dropout, None

    @property
    def input_multiple(self) -> int:
        """Input sides must be multiples of this (32): one mask unit in pixels."""
        return self.patch_stride * self.mask_unit_size

    @property
    def token_grid(self) -> tuple[int, int]:
        """Token grid (h, w) of the build size: the grid the stored position embedding has."""
        H, W = img_size_hw(self.img_size)
        return H // self.patch_stride, W // self.patch_stride

    @property
    def tokens_side(self) -> int:
        """Tokens per side of a square build size (the MAE model's grids)."""
        h, w = self.token_grid
        if h != w:
            raise ValueError(f"tokens_side needs a square img_size, got {self.img_size}")
        return h

    @property
    def units_side(self) -> int:
        """Mask units per side of a square build size (7 at 224)."""
        return self.tokens_side // self.mask_unit_size

    @property
    def num_unroll(self) -> int:
        """How many 2x2 levels the token order encodes: one per stage transition."""
        return len(self.depths) - 1

    @property
    def is_video(self) -> bool:
        return self.num_frames > 0

    @property
    def frames_t(self) -> int:
        """Temporal tokens of the build size (8 for 16 frames): the length of the temporal position embedding."""
        return self.num_frames // self.patch_stride_t

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input of the build size without the batch: (C, H, W), or (C, T, H, W) for video."""
        H, W = img_size_hw(self.img_size)
        return (self.in_chans, self.num_frames, H, W) if self.is_video else (self.in_chans, H, W)

    def validate(self) -> None:
        self.validate_trunk()
        if len(self.mask_unit_attn) != len(self.depths):
            raise ValueError(f"mask_unit_attn needs one flag per stage ({len(self.depths)}), got {self.mask_unit_attn}")
        if self.mask_unit_size != self.q_stride**self.num_unroll:
            raise ValueError(
                f"mask_unit_size must equal q_stride ** (len(depths) - 1) = {self.q_stride ** self.num_unroll}, "
                f"got {self.mask_unit_size}"
            )
        H, W = img_size_hw(self.img_size)
        if min(H, W) <= 0 or H % self.input_multiple or W % self.input_multiple:
            raise ValueError(f"Hiera img_size must be a positive multiple of {self.input_multiple} per side, got {self.img_size}")
        if self.num_frames < 0 or self.num_frames % self.patch_stride_t:
            raise ValueError(f"Hiera num_frames must be 0 (image model) or a positive multiple of patch_stride_t = "
                             f"{self.patch_stride_t}, got {self.num_frames}")



# ---------------------------------------------------------------------------------------------------------------
# Token order
# ---------------------------------------------------------------------------------------------------------------
# Write a token row as h = ((u * 2 + a3) * 2 + a2) * 2 + a1 (u: mask-unit row; a1 the finest bit, the one the first
# pooling removes), and likewise w with b1..b3. We store tokens in the order
#     (u, v | a1, b1 | a2, b2 | a3, b3)          (u, v: mask unit; a_i, b_i: 2x2 offset at level i)
# which puts three facts in the memory layout:
#   - a mask unit (fixed u, v) is a contiguous run of 64 tokens: mask-unit attention is attention over a
#     (B * units, 64, C) view, and dropping masked units (MAE) drops whole runs;
#   - the 4 tokens of every 2x2 pooling window share (a2, b2, a3, b3) and differ only in (a1, b1), the leading pair
#     inside the unit, so 2x2 max-pooling is ``view(B, units, 4, rest, C).amax(2)``, no gather;
#   - what pooling leaves is again in this order, one level shorter: (u, v | a2, b2 | a3, b3), and so on.
# The official code orders (a1, b1, a2, b2, a3, b3 | u, v): same pooling trick, but units are strided, not
# contiguous, which forces 5-D attention tensors. After every level has been pooled the order is raster (u, v).
#
# Video (temporal pooling stride 1, mask units 1 x 8 x 8) adds one outer unit axis and nothing else: every frame's
# (h, w) grid is unrolled as above and the frames are stacked outermost, so the order is
#     (t, u, v | a1, b1 | a2, b2 | a3, b3)
# -- a mask unit is still a contiguous run of 64 tokens, units are (t, u, v) in raster order, and the blocks (which
# derive the unit count from N) run unchanged. The official 3-D unroll gives (a1, b1 | a2, b2 | a3, b3 | t, u, v):
# again the same levels with the units last, so the one map to the official order (``Hiera._to_timm_order``) serves
# both. After the last pooling both are raster (t, h/32, w/32).
def unroll(x: Tensor, levels: int, stride: int = 2) -> Tensor:
    """(B, H, W, C) raster tokens -> (B, H*W, C) in mask-unit-major order with ``levels`` pooling levels."""
    B, H, W, C = x.shape
    s, n = stride, levels
    unit = s**n
    # (B, u, a_n..a_1, v, b_n..b_1, C): the coarsest offset bit comes first in a row index
    x = x.reshape(B, H // unit, *([s] * n), W // unit, *([s] * n), C)
    row_bits = [2 + n - i for i in range(1, n + 1)]  # dim of a_i (i = 1 finest)
    col_bits = [3 + 2 * n - i for i in range(1, n + 1)]  # dim of b_i
    perm = [0, 1, 2 + n] + [d for pair in zip(row_bits, col_bits) for d in pair] + [3 + 2 * n]
    return x.permute(perm).reshape(B, H * W, C)  # (B, u v a1 b1 .. an bn, C)


def reroll(x: Tensor, side: tuple[int, int], levels: int, stride: int = 2) -> Tensor:
    """Inverse of :func:`unroll`: (B, N, C) with ``levels`` unpooled levels -> (B, H, W, C) raster."""
    B, N, C = x.shape
    H, W = side
    s, n = stride, levels
    unit = s**n
    x = x.reshape(B, H // unit, W // unit, *([s, s] * n), C)  # (B, u, v, a1, b1, .., an, bn, C)
    row_bits = [3 + 2 * (n - j) for j in range(1, n + 1)]  # a_n .. a_1
    col_bits = [4 + 2 * (n - j) for j in range(1, n + 1)]  # b_n .. b_1
    perm = [0, 1] + row_bits + [2] + col_bits + [3 + 2 * n]
    return x.permute(perm).reshape(B, H, W, C)


def reroll_units(x: Tensor, units: int, levels: int, stride: int = 2) -> Tensor:
    """(B, units * T, C) mask-unit-major tokens -> (B, units, m, m, C), each unit in raster order (m = s**levels)."""
    B, N, C = x.shape
    m = stride**levels
    x = reroll(x.reshape(B * units, N // units, C), (m, m), levels, stride)  # (B * units, m, m, C)
    return x.reshape(B, units, m, m, C)


class _WindowMax(torch.autograd.Function):
    """``amax(dim)`` with a leaner backward than autograd's own (which turns the bool mask of maxima into floats
    twice and counts ties in int64). The gradient goes to the maxima, split evenly between ties, exactly as for
    ``amax``. Only plain tensor ops, so torch.compile traces through it (fullgraph) and Inductor lowers it."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        y = x.amax(dim)
        ctx.dim = dim
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, y = ctx.saved_tensors
        hit = x == y.unsqueeze(ctx.dim)
        ties = hit.sum(ctx.dim, dtype=torch.uint8)  # counted as bytes: no float copy of the mask
        share = grad / ties  # ties (e.g. a constant image) share the gradient
        return hit * share.unsqueeze(ctx.dim), None


def window_max(x: Tensor, dim: int) -> Tensor:
    """Max over ``dim`` (the pooling window, see ``unroll``), ``amax``'s values and gradient."""
    return _WindowMax.apply(x, dim) if x.requires_grad and torch.is_grad_enabled() else x.amax(dim)


def pool_tokens(x: Tensor, units: int, stride: int) -> Tensor:
    """Max over each 2x2 window: (B, N, C) -> (B, N / stride, C). The window is the leading pair inside a unit."""
    B, N, C = x.shape
    return window_max(x.view(B, units, stride, N // (units * stride), C), dim=2).view(B, N // stride, C)


# ---------------------------------------------------------------------------------------------------------------
# Attention and block
# ---------------------------------------------------------------------------------------------------------------
class MaskUnitAttention(nn.Module):
    """Multi-head attention, within mask units or global, with optional max-pooling of the queries.

    ``q_stride`` is the flattened pooling stride (4 for 2x2) and ``window_size`` the tokens per mask unit *after*
    pooling. Inputs are in the mask-unit-major order of :func:`unroll`, so the number of units is always
    N // (q_stride * window_size) (also with MAE, where only visible units are present).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int, window_size: int,
                 unit_attn: bool) -> None:
        super().__init__()
        self.dim_out, self.num_heads, self.head_dim = dim_out, num_heads, dim_out // num_heads
        self.q_stride, self.window_size, self.unit_attn = q_stride, window_size, unit_attn
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, C) -> (B, N', C_out)
        return self.proj(self.attend(self.qkv(x)))

    def attend(self, qkv: Tensor) -> Tensor:
        """Projected (B, N, 3 * C_out) q, k, v -> (B, N', C_out) attention output, before the output projection."""
        B, N, _ = qkv.shape
        # Mask-unit attention folds the units into the batch; global attention sees all N tokens at once. Either way
        # q, k, v are 4-D (batch, heads, tokens, head_dim), which SDPA's fused kernels accept.
        if self.unit_attn:
            units = N // (self.q_stride * self.window_size)
            G, T, U = B * units, N // units, 1
        else:  # U: units, only needed to locate the pooling windows
            G, T, U = B, N, N // (self.q_stride * self.window_size) if self.q_stride > 1 else 1
        # (G, T, 3, nh, hd) -> 3 x (G, nh, T, hd) views. Unbinding dim 2 (not permuting 3 to the front first) makes
        # the backward stack the three gradients straight into the token-major layout the qkv matmul reads: one copy.
        q, k, v = (t.transpose(1, 2) for t in qkv.view(G, T, 3, self.num_heads, self.head_dim).unbind(2))
        if self.q_stride > 1:  # the 2x2 window is the leading pair inside each unit (see unroll)
            q = q.reshape(G, self.num_heads, U, self.q_stride, T // (U * self.q_stride), self.head_dim)
            q = window_max(q, dim=3).view(G, self.num_heads, -1, self.head_dim)  # (G, nh, T / q_stride, hd)
        x = F.scaled_dot_product_attention(q, k, v)  # (G, nh, T', hd)
        return x.transpose(1, 2).reshape(B, -1, self.dim_out)  # (B, N', C_out)


class StageBlock(nn.Module):
    """The pre-norm block every Hiera is made of (Hiera, HieraDet): ``norm1`` -> ``attn`` and ``norm2`` -> ``mlp``
    residual branches; at a stage's first block the width changes, the residual taken as ``proj`` of the normed
    input (and pooled like the queries). Subclasses give the attention and the forward."""

    def __init__(self, dim: int, dim_out: int, attn: nn.Module, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim_out, eps=eps)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), F.gelu)


class HieraBlock(StageBlock):
    """Hiera's block: mask-unit or global attention over (B, N, C) tokens in mask-unit order. At a stage's first
    block the residual is max-pooled like the queries, so the block maps (B, N, C) -> (B, N / q_stride, C_out)."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: int = 1,
        window_size: int = 0,
        unit_attn: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, dim_out, MaskUnitAttention(dim, dim_out, num_heads, q_stride, window_size, unit_attn),
                         mlp_ratio, eps)
        self.q_stride, self.window_size = q_stride, window_size
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:
            x = self.pool(self.proj(x_norm))
        # residuals are added into the fresh branch output: one large allocation fewer per add
        x = self.drop_path(self.attn(x_norm)).add_(x)
        return self.drop_path(self.mlp(self.norm2(x))).add_(x)

    def pool(self, x: Tensor) -> Tensor:
        """The projected residual, max-pooled like the queries at a stage's first block."""
        if self.q_stride == 1:
            return x
        return pool_tokens(x, x.shape[1] // (self.q_stride * self.window_size), self.q_stride)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution (video: 3x7x7, stride 2x4x4); ``mask`` (B, 1, H, W) or (B, 1, T, H, W), 1 = keep,
    zeroes pixels first so nothing leaks out of masked units through the overlapping kernel."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        k, s, p = cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding
        if cfg.is_video:
            kt, st, pt = cfg.patch_kernel_t, cfg.patch_stride_t, cfg.patch_padding_t
            self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=(kt, k, k), stride=(st, s, s),
                                  padding=(pt, p, p))
        else:
            self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=s, padding=p)

    def forward(self, x: Tensor, pixel_mask: Tensor | None = None) -> Tensor:
        if pixel_mask is not None:
            x = x * pixel_mask
        return self.proj(x)  # (B, C, H/4, W/4), video (B, C, T/2, H/4, W/4)


# ---------------------------------------------------------------------------------------------------------------
# The trunk Hiera and HieraDet (SAM 2, models/hieradet.py) share
# ---------------------------------------------------------------------------------------------------------------
class HieraTrunk(Backbone):
    """Patch embedding -> stages of pre-norm blocks with query pooling -> pooled, normed classifier head.

    What every Hiera shares lives here: the stage builder (width and heads multiply and the queries pool at the
    first block of a stage; the attention choice lags the stage boundary by one block), the block runner (with
    activation checkpointing), timm's ``prune_intermediate_layers`` / ``get_classifier`` / ``reset_classifier``, the
    head and the official checkpoint names (:func:`official_hiera_key`). A subclass gives the block
    (:meth:`_make_block`: the attention), the embedding with its position embedding, and the layout of its tokens:
    Hiera keeps (B, N, C) tokens in mask-unit order, HieraDet channels-last maps (B, H, W, C).
    """

    classifier_prefixes = ("head.fc.",)
    embed_prefixes = ("patch_embed.", "pos_embed")  # layer id 0 (layer-wise LR decay)
    default_out_indices = 4  # features_only: the last 4 stages, i.e. all of them
    #: the axes the head pools: token axis 1 for (B, N, C) tokens, (1, 2) for channels-last maps
    head_pool_dim: int | tuple[int, ...] = 1

    def __init__(self, config: HieraTrunkConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.num_classes = config.num_classes
        self._make_embeddings()
        self._build_stages()
        self._make_head()
        self._init_weights()

    def _make_embeddings(self) -> None:
        """``patch_embed`` and the position embedding(s)."""
        raise NotImplementedError

    def _make_block(self, i: int, stage: int, dim: int, dim_out: int, heads: int, pool: bool,
                    drop_path: float) -> nn.Module:
        """Block ``i``; ``stage`` is the stage of the block before it (the attention switch lags one block)."""
        raise NotImplementedError

    def _init_weights(self) -> None:
        raise NotImplementedError

    def _build_stages(self) -> None:
        """``blocks``, ``pool_blocks`` (the blocks that pool queries and residual), ``feature_info`` (one entry per
        stage end) and ``num_features`` from the config."""
        cfg = self.config
        depth, ends = sum(cfg.depths), cfg.stage_ends
        self.pool_blocks = [e + 1 for e in ends[: cfg.q_pool]]
        rates = torch.linspace(0, cfg.drop_path_rate, depth, device="cpu").tolist()  # linear stochastic depth
        dim, heads, stage = cfg.embed_dim, cfg.num_heads, 0
        self.blocks = nn.ModuleList()
        self.feature_info: list[dict] = []
        for i in range(depth):
            prev_stage, dim_out = stage, dim
            if i - 1 in ends:
                dim_out, heads, stage = int(dim * cfg.dim_mul), int(heads * cfg.head_mul), stage + 1
            self.blocks.append(self._make_block(i, prev_stage, dim, dim_out, heads, i in self.pool_blocks, rates[i]))
            if i in ends:
                reduction = cfg.patch_stride * cfg.q_stride ** min(stage, cfg.q_pool)
                self.feature_info.append(dict(num_chs=dim_out, reduction=reduction, module=f"blocks.{i}"))
            dim = dim_out
        self.num_features = self.head_hidden_size = dim

    def _make_head(self) -> None:
        cfg = self.config
        self.head = NormClassifierHead(self.num_features, cfg.num_classes, cfg.global_pool, cfg.drop_rate,
                                       cfg.norm_eps, pool_dim=self.head_pool_dim)

    def _pools_by(self, block: int) -> int:
        """Poolings done by the end of ``block``."""
        return sum(1 for p in self.pool_blocks if p <= block)

    def _run_blocks(self, x: Tensor, take: Sequence[int] = (), last: int | None = None) -> tuple[Tensor, list[Tensor]]:
        """Run blocks 0..``last`` (default: all) -> (the output of ``last``, the outputs of the blocks in ``take``,
        in block order)."""
        last = len(self.blocks) - 1 if last is None else last
        outs = []
        for i, block in enumerate(self.blocks[: last + 1]):
            x = self.run_block(block, x)
            if i in take:
                outs.append(x)
        return x, outs

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def _taps(self, coarse: bool) -> list[int]:
        """The blocks ``indices`` count over: stage ends (coarse, timm's default) or every block."""
        return list(self.config.stage_ends) if coarse else list(range(len(self.blocks)))

    def _intermediate_blocks(self, indices: int | Sequence[int] | None, stop_early: bool,
                             coarse: bool) -> tuple[list[int], int]:
        """timm's index meaning for forward_intermediates -> (blocks whose outputs are taken, the last block run)."""
        taps = self._taps(coarse)
        take, last = feature_take_indices(len(taps), indices)
        return [taps[i] for i in take], min(taps[last] if stop_early else len(self.blocks) - 1, len(self.blocks) - 1)

    def _check_intermediate_args(self, norm: bool, output_fmt: str, fmts: Sequence[str]) -> bool:
        """One-line ValueErrors for forward_intermediates' ``norm`` (refused, as timm: the trunk has no norm over
        its maps, the head's norm comes after pooling) and ``output_fmt``; returns whether it is channels-last."""
        if norm:
            raise ValueError(f"{type(self).__name__} has no norm over its feature maps; pass norm=False")
        if output_fmt not in fmts:
            raise ValueError(f"output_fmt must be one of {', '.join(map(repr, fmts))}, got {output_fmt!r}")
        return output_fmt in ("NHWC", "NTHWC")

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True, coarse: bool = True
    ) -> list[int]:
        """Drop the blocks after the last level in ``indices`` (meaning as in forward_intermediates). If blocks were
        dropped, ``num_features`` becomes the last kept width. With ``prune_head`` or dropped blocks the head keeps
        only its pooling: norm and classifier become identities (as timm). Returns the absolute indices taken.
        (``prune_norm``: the only final norm is the head's, so it has no separate effect.)"""
        taps = self._taps(coarse)
        take, last = feature_take_indices(len(taps), indices)
        last_block = taps[last]
        prune_end = last_block < len(self.blocks) - 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.blocks[last_block].dim_out
        self.blocks = self.blocks[: last_block + 1]
        if prune_head or prune_end:
            self.reset_classifier(0, reset_other=True)
        return take

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        """New classifier for ``num_classes`` (0: identity, the head returns pooled, normed features).
        ``global_pool`` changes the pooling ('' keeps every position); ``reset_other`` also drops the head's norm."""
        self.head.reset(num_classes, global_pool, reset_other=reset_other, in_features=self.num_features)
        ref = self.patch_embed.proj.weight
        self.head.fc.to(ref.device, ref.dtype)
        if global_pool is not None:
            self.config.global_pool = global_pool
        self.num_classes = self.config.num_classes = num_classes
        self.head_hidden_size = self.head.num_features

    def no_weight_decay(self) -> set[str]:
        return set(self.pos_embed_names)


def official_hiera_key(k: str) -> str:
    """An official hiera-transformer classifier key -> ours (timm's): ``head.projection.`` -> ``head.fc.``, the
    final ``norm.`` -> ``head.norm.``; other keys unchanged."""
    if k.startswith("head.projection."):
        return "head.fc." + k.removeprefix("head.projection.")
    if k.startswith("norm."):
        return "head." + k
    return k


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------
class Hiera(HieraTrunk):
    """Hiera classifier. ``forward_tokens`` is the encoder shared with the MAE model (bettervit.pretrain.mae).

    Attributes as timm's Hiera: ``num_classes``, ``num_features`` (width of the last kept block),
    ``head_hidden_size``, ``feature_info`` (one dict per stage: num_chs, reduction, module).
    """

    # the unroll / mask-unit reshapes give torch.export's symbolic shapes nested floor divisions it does not finish
    # simplifying: export one size per graph
    export_dynamic_hw = False

    def _make_embeddings(self) -> None:
        cfg = self.config
        self.patch_embed = PatchEmbed(cfg)
        h, w = cfg.token_grid
        if cfg.is_video:  # separable, as the official video models: spatial (raster h, w) + temporal (t)
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, cfg.embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, cfg.frames_t, cfg.embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, h * w, cfg.embed_dim))  # raster order, build-size grid
        self._pos_cache = ResampledPosEmbedCache()  # run-time grid -> resampled position embedding

    def _make_block(self, i: int, stage: int, dim: int, dim_out: int, heads: int, pool: bool,
                    drop_path: float) -> nn.Module:
        """Mask-unit attention in the stages flagged by ``mask_unit_attn`` (units of ``mask_unit_size``^2 tokens,
        shrunk by every pooling so far), global attention after."""
        cfg = self.config
        q_stride = cfg.q_stride**2  # flattened 2x2
        window = cfg.mask_unit_size**2 // q_stride ** self._pools_by(i)  # tokens per mask unit after pooling
        return HieraBlock(dim, dim_out, heads, mlp_ratio=cfg.mlp_ratio, drop_path=drop_path,
                          q_stride=q_stride if pool else 1, window_size=window, unit_attn=cfg.mask_unit_attn[stage],
                          eps=cfg.norm_eps)

    def _init_weights(self) -> None:
        for name in self.pos_embed_names:
            nn.init.trunc_normal_(getattr(self, name), std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(getattr(self, "head", None), NormClassifierHead) and isinstance(self.head.fc, nn.Linear):
            self.head.fc.weight.data.mul_(self.config.head_init_scale)

    # --- position embedding at the input's grid -----------------------------------------------------------------
    @property
    def pos_embed_names(self) -> tuple[str, ...]:
        """The position-embedding parameters: ``pos_embed``, or for video the separable pair."""
        return ("pos_embed_spatial", "pos_embed_temporal") if self.config.is_video else ("pos_embed",)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The (1, h*w, C) raster position embedding for a token grid: the stored one at the build size, else
        resampled from it (bicubic with antialias, timm's ``resample_abs_pos_embed``), cached per grid for inference
        (see ResampledPosEmbedCache). Video: the spatial part."""
        base = self.config.token_grid
        pos = self.pos_embed_spatial if self.config.is_video else self.pos_embed
        if tuple(grid) == base:
            return pos
        return self._pos_cache.get_or_resample(pos, grid, lambda p: resample_abs_pos_embed(p, grid, base))

    def pos_embed_temporal_for(self, t: int) -> Tensor:
        """Video: the (1, t, C) temporal position embedding for ``t`` temporal tokens: the stored one at the build
        frame count, else linearly interpolated from it (align_corners=False), the 1-D analogue of the spatial
        resampling. A few rows: recomputed each call, never cached."""
        pos = self.pos_embed_temporal
        if t == pos.shape[1]:
            return pos
        return resample_temporal(pos, t)

    def _apply(self, fn, recurse=True):
        self._pos_cache.clear()  # tables follow the module's device / dtype
        return super()._apply(fn, recurse)

    # --- encoder ------------------------------------------------------------------------------------------------
    def _check(self, x: Tensor, fixed: tuple[int, ...] | None = None) -> None:
        """One-line ValueError for an input this model cannot take; ``fixed``: the only (T,) H, W it runs at."""
        cfg = self.config
        if not cfg.is_video:
            if x.ndim == 5:
                raise ValueError(f"{type(self).__name__} is an image model: expected (B, C, H, W), got a 5-D batch "
                                 f"{tuple(x.shape)} (video models, e.g. hiera_base_16x224, take (B, C, T, H, W))")
            self.check_input(x, cfg.input_multiple, fixed=fixed)
            return
        if x.ndim != 5:
            raise ValueError(f"{type(self).__name__} is a video model: expected a 5-D clip batch (B, C, T, H, W), "
                             f"got shape {tuple(x.shape)}")
        T, st = x.shape[2], cfg.patch_stride_t
        if T == 0 or T % st:
            raise ValueError(f"{type(self).__name__}: the frame count must be a positive multiple of {st}, got {T}")
        if fixed is not None and T != fixed[0]:
            raise ValueError(f"{type(self).__name__} was built for {fixed[0]} frames, got {T}")
        self.check_input(x[:, :, 0], cfg.input_multiple, fixed=None if fixed is None else fixed[1:])

    def num_units_of(self, x: Tensor) -> int:
        """Mask units of an input: (H/32) * (W/32), times T/2 for video; raster (t,) u, v."""
        m = self.config.input_multiple
        units = (x.shape[-2] // m) * (x.shape[-1] // m)
        return units * (x.shape[2] // self.config.patch_stride_t) if self.config.is_video else units

    def _check_mask(self, mask: Tensor, x: Tensor) -> None:
        units = self.num_units_of(x)
        if mask.dtype != torch.bool or tuple(mask.shape) != (x.shape[0], units):
            raise ValueError(f"mask must be a bool tensor of shape {(x.shape[0], units)} (True = keep the mask "
                             f"unit), got {mask.dtype} {tuple(mask.shape)}")

    def embed(self, x: Tensor, visible: Tensor | None = None) -> tuple[Tensor, tuple[int, ...]]:
        """Images (B, C, H, W) -> ((B, N, C) tokens in mask-unit-major order with position embeddings, token grid
        (h, w)); clips (B, C, T, H, W) -> ((B, t*h*w, C), (t, h, w)), t = T / patch_stride_t.

        ``visible`` (B, units) bool, True = keep, units in raster order over the input's unit grid: pixels of the
        other units are zeroed before the patch conv and their tokens dropped, leaving (B, n_visible * 64, C).
        Clip tokens are frame-major, each frame unrolled as an image (see the token-order note above ``unroll``), so
        mask units (t, u, v) are contiguous runs in raster order. A temporal unit covers patch_stride_t frames,
        whose pixels are zeroed together (the official code resizes the unit mask to the frames by nearest
        interpolation: frame i belongs to temporal unit i // patch_stride_t).
        """
        cfg = self.config
        pixel_mask = None if visible is None else self._pixel_mask(visible, x.shape[2:]).to(x.dtype)
        x = self.patch_embed(x, pixel_mask)  # (B, C, h, w), video (B, C, t, h, w)
        video = x.ndim == 5
        if not video:
            x = x.unsqueeze(2)  # an image is a clip of one temporal token
        B, C, t, h, w = x.shape
        x = unroll(x.permute(0, 2, 3, 4, 1).reshape(B * t, h, w, C), cfg.num_unroll, cfg.q_stride)  # (B*t, h*w, C)
        pos = unroll(self.pos_embed_for((h, w)).view(1, h, w, C), cfg.num_unroll, cfg.q_stride)  # (1, h*w, C)
        if video:  # spatial + temporal first, then added to the tokens: the official order of the sums
            pos = pos.view(1, 1, h * w, C) + self.pos_embed_temporal_for(t).view(1, t, 1, C)  # (1, t, h*w, C)
        x = (x.view(B, t, h * w, C) + pos.view(1, -1, h * w, C)).view(B, t * h * w, C)
        if visible is not None:
            x = x.view(B, visible.shape[1], -1, C)[visible].view(B, -1, C)  # keep whole visible units
        return x, ((t, h, w) if video else (h, w))

    def _pixel_mask(self, visible: Tensor, size: Sequence[int]) -> Tensor:
        """(B, units) bool unit mask -> (B, 1, [T,] H, W) bool pixel mask for an input of spatial (and temporal)
        ``size``: each unit covers multiple x multiple pixels (and patch_stride_t frames for video)."""
        cfg = self.config
        spans = ((cfg.patch_stride_t,) if len(size) == 3 else ()) + (cfg.input_multiple, cfg.input_multiple)
        shape, expand = [visible.shape[0], 1], [-1, -1]
        for side, span in zip(size, spans):  # (units along this axis, 1) expanded to (units, span)
            shape += [side // span, 1]
            expand += [-1, span]
        return visible.view(shape).expand(expand).reshape(visible.shape[0], 1, *size)

    def _levels_after(self, stage: int) -> int:
        """Unpooled levels left in the token order at the end of ``stage``."""
        return self.config.num_unroll - min(stage, self.config.q_pool)

    def _encode(
        self, x: Tensor, visible: Tensor | None = None, take: Sequence[int] = (), last: int | None = None
    ) -> tuple[Tensor, tuple[int, int], list[Tensor]]:
        """Embed and run blocks 0..``last`` (default: all). -> (tokens after ``last``, input token grid, the
        outputs of the blocks in ``take``, in block order)."""
        self._check(x)
        x, grid = self.embed(x, visible)
        x, outs = self._run_blocks(x, take, last)
        return x, grid, outs

    def forward_tokens(
        self, x: Tensor, visible: Tensor | None = None, take: set[int] | None = None
    ) -> tuple[Tensor, list[tuple[int, Tensor]]]:
        """Run the encoder (our token order). Returns the last tokens (B, N', C) and, for each stage in ``take``,
        (stage, its output tokens); stops after the last stage asked for."""
        ends = self.config.stage_ends
        stages = sorted(take or ())
        last = ends[stages[-1]] if stages else None
        x, _, outs = self._encode(x, visible, [ends[j] for j in stages], last)
        return x, list(zip(stages, outs))

    def _to_timm_order(self, x: Tensor, block: int) -> Tensor:
        """Tokens after ``block`` in timm's (and the official code's) order: the unpooled 2x2 levels first, the
        mask units last (ours keeps units outermost, see unroll). Raster once every level has pooled."""
        levels = self.config.num_unroll - self._pools_by(block)
        if levels == 0:
            return x
        B, N, C = x.shape
        per_unit = self.config.q_stride ** (2 * levels)
        return x.view(B, N // per_unit, per_unit, C).transpose(1, 2).reshape(B, N, C)

    def _to_map(self, t: Tensor, block: int, grid: tuple[int, ...], units: int | None) -> Tensor:
        """Block output tokens -> (B, h, w, C) raster map, or with a mask (B, visible units, m, m, C).
        Video (grid (t, h, w)): (B, t, h, w, C), or with a mask (B, visible units, 1, m, m, C) as the official
        Reroll returns it (a unit spans one temporal token)."""
        cfg = self.config
        pools, levels = self._pools_by(block), cfg.num_unroll - self._pools_by(block)
        if units is not None:
            m = reroll_units(t, units, levels, cfg.q_stride)
            return m.unsqueeze(2) if len(grid) == 3 else m
        side = (grid[-2] // cfg.q_stride**pools, grid[-1] // cfg.q_stride**pools)
        if len(grid) == 2:
            return reroll(t, side, levels, cfg.q_stride)
        B, N, C = t.shape  # frame-major: each frame's tokens are one image's unrolled tokens
        frames = reroll(t.reshape(B * grid[0], N // grid[0], C), side, levels, cfg.q_stride)  # (B*t, h, w, C)
        return frames.view(B, grid[0], *side, C)

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, N, C_last) tokens (raster (H/32, W/32) once all three poolings have run); video
        (B, C, T, H, W) -> raster (T/2, H/32, W/32) tokens, the official order.

        ``mask`` (B, units) bool, True = keep (timm's meaning): only those mask units are encoded."""
        if mask is not None:
            self._check_mask(mask, x)
        x, _, _ = self._encode(x, mask)
        return self._to_timm_order(x, len(self.blocks) - 1)

    def forward_intermediates(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = True,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        coarse: bool = True,
    ) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
        """Stage maps as timm's Hiera returns them: ``(final tokens, [maps])``, or ``[maps]`` if
        ``intermediates_only``.

        ``indices`` count over the 4 stages (strides 4, 8, 16, 32), or over blocks with ``coarse=False``: None = all,
        int n = the last n, a sequence picks (negative from the end); maps come in block order. Maps are NCHW or NHWC
        (``output_fmt``), spatial order. ``stop_early`` (timm's Hiera default: True) stops after the last block
        asked for; the final tokens are then that block's output, in timm's token order (see ``_to_timm_order``).
        ``mask`` (B, units) bool, True = keep: only those mask units run, and each map is per unit,
        (B, kept units, m, m, C) (``output_fmt='NHWC'`` only, as timm). ``norm`` is refused, as by timm: Hiera has
        no norm over its stage maps (the head's norm comes after pooling).

        Video models return 5-D maps: channels first (B, C, t, h, w) for ``'NCHW'`` (the default, so features_only
        works unchanged) or its alias ``'NCTHW'``, channels last (B, t, h, w, C) for ``'NHWC'`` / ``'NTHWC'`` (the
        official ``return_intermediates`` layout); t = T / 2 at every stage (no temporal pooling). With a mask:
        (B, kept units, 1, m, m, C), channels last only.
        """
        video = self.config.is_video
        fmts = ("NCHW", "NHWC", "NCTHW", "NTHWC") if video else ("NCHW", "NHWC")
        channels_last = self._check_intermediate_args(norm, output_fmt, fmts)
        if mask is not None:
            self._check_mask(mask, x)
            if not channels_last:
                raise ValueError("with a mask the maps are per mask unit (B, units, m, m, C): pass output_fmt='NHWC'")
        take_blocks, last_block = self._intermediate_blocks(indices, stop_early, coarse)
        x, grid, outs = self._encode(x, mask, take_blocks, last_block)
        units = None if mask is None else int(mask[0].sum())
        blocks = [i for i in range(last_block + 1) if i in take_blocks]
        maps = []
        for block, t in zip(blocks, outs):
            m = self._to_map(t, block, grid, units)
            if not channels_last:  # (B, [t,] h, w, C) -> (B, C, [t,] h, w)
                m = m.permute(0, m.ndim - 1, *range(1, m.ndim - 1))
            maps.append(m)
        if intermediates_only:
            return maps
        return self._to_timm_order(x, last_block), maps

    # --- training helpers ---------------------------------------------------------------------------------------
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups as timm's (stem = position and patch embedding, then one group per block)."""
        return dict(stem=r"^pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    # --- checkpoints --------------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return convert_checkpoint(state_dict, self)


# ---------------------------------------------------------------------------------------------------------------
# Variants (timm names; default weights: timm's copies of the official MAE-pretrained, IN-1k fine-tuned models)
# ---------------------------------------------------------------------------------------------------------------
SIZES: dict[str, dict] = {
    "tiny": dict(embed_dim=96, num_heads=1, depths=(1, 2, 7, 2)),
    "small": dict(embed_dim=96, num_heads=1, depths=(1, 2, 11, 2)),
    "base": dict(embed_dim=96, num_heads=1, depths=(2, 3, 16, 3)),
    "base_plus": dict(embed_dim=112, num_heads=2, depths=(2, 3, 16, 3)),
    "large": dict(embed_dim=144, num_heads=2, depths=(2, 6, 36, 4)),
    "huge": dict(embed_dim=256, num_heads=4, depths=(2, 6, 36, 4)),
}


#: image classifiers: name -> size (default weights timm/<name>.mae_in1k_ft_in1k)
IMAGE_VARIANTS: dict[str, str] = {
    "hiera_tiny_224": "tiny",
    "hiera_small_224": "small",
    "hiera_base_224": "base",
    "hiera_base_plus_224": "base_plus",
    "hiera_large_224": "large",
    "hiera_huge_224": "huge",
}
for _name, _size in IMAGE_VARIANTS.items():
    register_variant(Hiera, _name, functools.partial(HieraConfig, **SIZES[_size]),
                     f"Hiera-{_size} at 224x224 (MAE IN-1k pretrained, IN-1k fine-tuned weights).",
                     weights=f"timm/{_name}.mae_in1k_ft_in1k", family="hiera")


@register_model(Hiera, family="hiera")
def hiera_nano() -> HieraConfig:
    """A small extra variant for quick experiments, demos and tests (not a released model): 64 px, widths
    32-64-128-256, depths 1-1-2-1. Tokens 16x16 -> 2x2, mask units 2x2."""
    return HieraConfig(embed_dim=32, num_heads=1, depths=(1, 1, 2, 1), img_size=64)


@register_model(Hiera, family="hiera")
def hiera_nano_video() -> HieraConfig:
    """hiera_nano for clips, for quick experiments, demos and tests (not a released model): 8 frames of 64 px ->
    4 x 16 x 16 tokens, 4 x 2 x 2 mask units."""
    return HieraConfig(embed_dim=32, num_heads=1, depths=(1, 1, 2, 1), img_size=64, num_frames=8)


# Video variants: the official Kinetics-400 models (Ryali et al., sec. 4 / table 3; facebookresearch/hiera
# ``hiera_*_16x224``): 16 frames at 224 px, 400 classes. Their weights are not on the Hugging Face hub; the official
# files (dl.fbaipublicfiles.com) load as they are (pretrained=PATH). Normalisation: the official code uses the
# ImageNet mean / std for Kinetics too.
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/hiera/{name}.pth"
#: video classifiers: name -> size
VIDEO_VARIANTS: dict[str, str] = {
    "hiera_base_16x224": "base",
    "hiera_base_plus_16x224": "base_plus",
    "hiera_large_16x224": "large",
    "hiera_huge_16x224": "huge",
}
for _name, _size in VIDEO_VARIANTS.items():
    register_variant(
        Hiera, _name, functools.partial(HieraConfig, **SIZES[_size], num_frames=16, num_classes=400),
        f"Hiera-{_size} for video, 16 frames at 224x224 (MAE K400 pretrained, K400 fine-tuned weights).",
        family="hiera",
        pretrained_cfg=dict(url=OFFICIAL_URL.format(name=_name), tag="mae_k400_ft_k400", num_classes=400,
                            input_size=[3, 16, 224, 224], mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                            license="cc-by-nc-4.0", paper_ids="arXiv:2306.00989"),
    )


def resample_temporal(pos: Tensor, t: int) -> Tensor:
    """(1, t0, C) temporal position embedding -> (1, t, C), linear interpolation (align_corners=False), in fp32."""
    out = F.interpolate(pos.float().transpose(1, 2), size=t, mode="linear", align_corners=False)  # (1, C, t)
    return out.transpose(1, 2).to(pos.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint key map
# ---------------------------------------------------------------------------------------------------------------
# timm (hiera_*_224): keys equal ours.
# official hiera-transformer (hiera_*_224.pth): {"model_state": {...}} (unwrapped by bettervit.weights), classifier
#   norm at "norm.", classifier at "head.projection.".
# official MAE checkpoints (mae_hiera_*_224.pth) loaded into the classifier: the encoder keys are ours; the MAE
#   "encoder_norm" (the norm over the fused features) initialises head.norm, as timm does; the decoder, mask token
#   and fusion heads are dropped.
# official video models (hiera_*_16x224.pth, mae_hiera_*_16x224.pth): the same keys, with pos_embed_spatial /
#   pos_embed_temporal (ours too) in place of pos_embed and a 5-D patch_embed.proj.weight.
_MAE_ONLY = ("decoder_", "mask_token", "multi_scale_fusion_heads.")


def convert_checkpoint(state_dict: dict[str, Tensor], model: Hiera) -> dict[str, Tensor]:
    """timm or official Hiera / MAE-Hiera state dict -> this classifier's keys; position embedding resized."""
    is_mae = any(k.startswith(_MAE_ONLY) for k in state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.startswith(_MAE_ONLY):
            continue
        if k.startswith("encoder_norm.") and is_mae:
            k = "head.norm." + k.removeprefix("encoder_norm.")
        out[official_hiera_key(k)] = v
    resize_pos_embeds(out, model.config)
    return out


def resize_pos_embeds(state_dict: dict[str, Tensor], cfg: HieraConfig) -> None:
    """In place: a checkpoint's encoder position tables resized to ``cfg``'s grid (the spatial one bicubic with antialias from
    its square grid, as at run time, the temporal one linearly)."""
    for k in ("pos_embed", "pos_embed_spatial"):
        if k in state_dict and state_dict[k].shape[1] != math.prod(cfg.token_grid):
            state_dict[k] = resample_abs_pos_embed(state_dict[k], cfg.token_grid)  # from a square grid
    if "pos_embed_temporal" in state_dict and state_dict["pos_embed_temporal"].shape[1] != cfg.frames_t:
        state_dict["pos_embed_temporal"] = resample_temporal(state_dict["pos_embed_temporal"], cfg.frames_t)

