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

The file reads top to bottom: config -> token order -> attention -> block -> model -> variants -> checkpoint key
map. Parameter names equal timm's (``hiera_*_224``); the official ``hiera-transformer`` names are mapped on load.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, Mlp, onednn
from ..registry import register_model
from .base import Backbone


@dataclass
class HieraConfig:
    embed_dim: int = 96  # width of stage 1; doubles at each stage (dim_mul)
    num_heads: int = 1  # heads of stage 1; double at each stage (head_mul)
    stages: tuple[int, ...] = (2, 3, 16, 3)  # blocks per stage
    img_size: int = 224  # a multiple of patch_stride * mask_unit_size = 32
    in_chans: int = 3
    num_classes: int = 1000
    q_pool: int = 3  # number of stage transitions that pool (3 for classifiers, 2 for MAE encoders)
    q_stride: int = 2  # pooling stride per axis
    mask_unit_size: int = 8  # tokens per mask-unit side; must equal q_stride ** (len(stages) - 1)
    mask_unit_attn: tuple[bool, ...] = (True, True, False, False)  # per stage: mask-unit (True) or global
    dim_mul: float = 2.0
    head_mul: float = 2.0
    patch_kernel: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    norm_eps: float = 1e-6
    head_init_scale: float = 0.001

    @property
    def tokens_side(self) -> int:
        return self.img_size // self.patch_stride

    @property
    def units_side(self) -> int:
        """Mask units per side of the image (7 at 224)."""
        return self.tokens_side // self.mask_unit_size

    @property
    def num_unroll(self) -> int:
        """How many 2x2 levels the token order encodes: one per stage transition."""
        return len(self.stages) - 1

    @property
    def stage_ends(self) -> list[int]:
        return [sum(self.stages[: i + 1]) - 1 for i in range(len(self.stages))]

    def stage_dims(self) -> list[int]:
        return [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]

    def validate(self) -> None:
        if len(self.mask_unit_attn) != len(self.stages):
            raise ValueError(f"mask_unit_attn needs one flag per stage ({len(self.stages)}), got {self.mask_unit_attn}")
        if not 0 <= self.q_pool < len(self.stages):
            raise ValueError(f"q_pool must be in [0, {len(self.stages) - 1}], got {self.q_pool}")
        if self.mask_unit_size != self.q_stride**self.num_unroll:
            raise ValueError(
                f"mask_unit_size must equal q_stride ** (stages - 1) = {self.q_stride ** self.num_unroll}, "
                f"got {self.mask_unit_size}"
            )
        multiple = self.patch_stride * self.mask_unit_size
        if self.img_size <= 0 or self.img_size % multiple:
            raise ValueError(f"Hiera img_size must be a positive multiple of {multiple}, got {self.img_size}")


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
    twice and counts ties in int64, ~2x slower here). The gradient goes to the maxima, split evenly between ties,
    exactly as for ``amax``."""

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
        ties = hit.view(torch.uint8).sum(ctx.dim, dtype=torch.uint8)  # counted as bytes: no float copy of the mask
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

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: int, window_size: int, unit_attn: bool) -> None:
        super().__init__()
        self.dim_out, self.heads, self.head_dim = dim_out, heads, dim_out // heads
        self.q_stride, self.window_size, self.unit_attn = q_stride, window_size, unit_attn
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """(B, N, C) -> (B, N', C_out); with ``residual`` (CPU fp32 inference only) residual + output, one kernel."""
        B, N, _ = x.shape
        # Mask-unit attention folds the units into the batch; global attention sees all N tokens at once. Either way
        # q, k, v are 4-D (batch, heads, tokens, head_dim), which SDPA's fused kernels accept.
        if self.unit_attn:
            units = N // (self.q_stride * self.window_size)
            G, T, U = B * units, N // units, 1
        else:  # U: units, only needed to locate the pooling windows
            G, T, U = B, N, N // (self.q_stride * self.window_size) if self.q_stride > 1 else 1
        if residual is not None:  # CPU fp32 inference (see HieraBlock.forward): oneDNN on the packed weight
            qkv = onednn.linear(x, self.qkv.weight, self.qkv.bias)
        else:
            qkv = self.qkv(x)
        # (G, T, 3, nh, hd) -> 3 x (G, nh, T, hd) views. Unbinding dim 2 (not permuting 3 to the front first) makes
        # the backward stack the three gradients straight into the token-major layout the qkv matmul reads: one copy.
        q, k, v = (t.transpose(1, 2) for t in qkv.view(G, T, 3, self.heads, self.head_dim).unbind(2))
        if self.q_stride > 1:  # the 2x2 window is the leading pair inside each unit (see unroll)
            q = q.reshape(G, self.heads, U, self.q_stride, T // (U * self.q_stride), self.head_dim)
            q = window_max(q, dim=3).view(G, self.heads, -1, self.head_dim)  # (G, nh, T / q_stride, hd)
        x = F.scaled_dot_product_attention(q, k, v)  # (G, nh, T', hd)
        x = x.transpose(1, 2).reshape(B, -1, self.dim_out)  # (B, N', C_out)
        if residual is not None:
            return onednn.linear_add(x, residual, self.proj.weight, self.proj.bias)
        return self.proj(x)


class HieraMlp(Mlp):
    """Linear -> GELU (erf) -> Linear, plus an optional residual. In CPU fp32 inference fc1 + GELU and fc2 + residual
    each run as one oneDNN kernel: the same math without writing and re-reading the 4x-wide hidden activation or the
    block output (on a 2-core CPU GELU alone costs ~40% of fc1, a residual add ~60% of fc2)."""

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if onednn.usable(x):
            h = onednn.linear(x, self.fc1.weight, self.fc1.bias, "gelu", "none")
            if residual is None:
                return onednn.linear(h, self.fc2.weight, self.fc2.bias)
            return onednn.linear_add(h, residual, self.fc2.weight, self.fc2.bias)
        y = self.fc2(self.act(self.fc1(x)))
        return y if residual is None else y.add_(residual)


class HieraBlock(nn.Module):
    """Pre-norm transformer block. At a stage's first block the width changes: the residual is projected from the
    normed input and max-pooled like the queries, so the block maps (B, N, C) -> (B, N / q_stride, C_out)."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: int = 1,
        window_size: int = 0,
        unit_attn: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out, self.q_stride, self.window_size = dim, dim_out, q_stride, window_size
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, window_size, unit_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim_out, eps=eps)
        self.mlp = HieraMlp(dim_out, int(dim_out * mlp_ratio), F.gelu)

    # On CPU, blocks with many tokens run in pieces: in inference mask-unit blocks by units (see _in_chunks), in
    # training any block by whole images (at the stride-4 stage ~1.15x faster forward + backward on a 2-core CPU:
    # fewer tensors above glibc's 32 MB mmap threshold, each of which page-faults afresh on every allocation).
    chunk_tokens = 4096
    train_chunk_tokens = 8192

    def forward(self, x: Tensor) -> Tensor:
        if onednn.usable(x) and not self.training:  # CPU fp32 inference: oneDNN kernels, residuals fused
            if self.attn.unit_attn and x.shape[0] * x.shape[1] >= 2 * self.chunk_tokens:
                return self._in_chunks(x)
            return self._forward_inference(x)
        B, N, _ = x.shape
        if x.device.type == "cpu" and B > 1 and B * N >= 2 * self.train_chunk_tokens:
            return torch.cat([self._forward_train(c) for c in x.split(max(1, self.train_chunk_tokens // N))])
        return self._forward_train(x)

    def _forward_train(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:
            x = self._pool(self.proj(x_norm))
        # residuals are added into the fresh branch output: one large allocation fewer per add
        x = self.drop_path(self.attn(x_norm)).add_(x)
        if isinstance(self.drop_path, nn.Identity):
            return self.mlp(self.norm2(x), residual=x)
        return self.drop_path(self.mlp(self.norm2(x))).add_(x)

    def _pool(self, x: Tensor) -> Tensor:
        """The projected residual, max-pooled like the queries at a stage's first block."""
        if self.q_stride == 1:
            return x
        return pool_tokens(x, x.shape[1] // (self.q_stride * self.window_size), self.q_stride)

    def _forward_inference(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:
            x = self._pool(onednn.linear(x_norm, self.proj.weight, self.proj.bias))
        x = self.attn(x_norm, residual=x)
        return self.mlp(self.norm2(x), residual=x)

    def _in_chunks(self, x: Tensor) -> Tensor:
        """The same block, a few thousand tokens at a time.

        With mask-unit attention every unit is computed on its own, and the unit-major token order (see ``unroll``)
        keeps a unit's tokens contiguous: (B, N, C) -> (B * units, tokens per unit, C) makes each unit a batch item
        with the same result, and the batch can be split anywhere. At the stride-4 stage a batch of 8 is 25k tokens,
        whose 4x-wide MLP activation alone is 38 MB; in chunks of 4096 tokens the intermediates stay in cache
        instead of streaming through memory, and those blocks run ~1.3-1.7x faster on a 2-core CPU.
        """
        B, N, C = x.shape
        unit = self.q_stride * self.window_size  # input tokens per mask unit
        units = x.reshape(B * N // unit, unit, C)
        per = max(1, self.chunk_tokens // unit)
        out = torch.cat([self._forward_inference(chunk) for chunk in units.split(per)])
        return out.view(B, -1, self.dim_out)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution; ``mask`` (B, 1, H, W), 1 = keep, zeroes pixels first so nothing leaks out of
    masked units through the overlapping kernel."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        k, s, p = cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=s, padding=p)

    def forward(self, x: Tensor, pixel_mask: Tensor | None = None) -> Tensor:
        if pixel_mask is not None:
            x = x * pixel_mask
        return self.proj(x)  # (B, C, H/4, W/4)


class Head(nn.Module):
    """Mean over tokens -> LayerNorm -> dropout -> Linear. Returns logits in train and eval mode."""

    def __init__(self, dim: int, num_classes: int, cfg: HieraConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.head_dropout)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, N, C) -> (B, classes)
        x = self.drop(self.norm(x.mean(dim=1)))
        return x if pre_logits else self.fc(x)


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------
class Hiera(Backbone):
    """Hiera classifier. ``forward_tokens`` is the encoder shared with the MAE model (bettervit.pretrain.mae)."""

    classifier_prefixes = ("head.fc.",)

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens_side**2, cfg.embed_dim))  # raster order

        depth, ends = sum(cfg.stages), cfg.stage_ends
        pool_blocks = {e + 1 for e in ends[: cfg.q_pool]}
        rates = [cfg.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear stochastic depth
        dim, heads, stage = cfg.embed_dim, cfg.num_heads, 0
        window = cfg.mask_unit_size**2  # tokens per mask unit, flattened
        q_stride = cfg.q_stride**2
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = dim
            unit_attn = cfg.mask_unit_attn[stage]  # read before the stage advances: the switch lags one block
            if i - 1 in ends:
                dim_out, heads, stage = int(dim * cfg.dim_mul), int(heads * cfg.head_mul), stage + 1
                if i in pool_blocks:
                    window //= q_stride
            self.blocks.append(
                HieraBlock(
                    dim, dim_out, heads, mlp_ratio=cfg.mlp_ratio, drop_path=rates[i],
                    q_stride=q_stride if i in pool_blocks else 1, window_size=window, unit_attn=unit_attn,
                    eps=cfg.norm_eps,
                )
            )
            dim = dim_out
        self.num_features = dim
        self._make_head()
        self._init_weights()

    def _make_head(self) -> None:
        self.head = Head(self.num_features, self.config.num_classes, self.config)

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(getattr(self, "head", None), Head) and isinstance(self.head.fc, nn.Linear):
            self.head.fc.weight.data.mul_(self.config.head_init_scale)

    # --- encoder ------------------------------------------------------------------------------------------------
    def _run(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def _check(self, x: Tensor) -> None:
        cfg = self.config
        self.check_input(x, cfg.patch_stride * cfg.mask_unit_size, fixed=(cfg.img_size, cfg.img_size))

    def embed(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        """Images -> (B, N, C) tokens in mask-unit-major order with position embeddings.

        ``visible`` (B, units) bool, True = keep: pixels of the other units are zeroed before the patch conv and
        their tokens dropped, leaving (B, n_visible * 64, C).
        """
        cfg = self.config
        pixel_mask = None
        if visible is not None:
            m, p = cfg.units_side, cfg.mask_unit_size * cfg.patch_stride
            pixel_mask = visible.view(-1, 1, m, 1, m, 1).expand(-1, -1, -1, p, -1, p)
            pixel_mask = pixel_mask.reshape(-1, 1, m * p, m * p).to(x.dtype)  # (B, 1, H, W)
        x = self.patch_embed(x, pixel_mask)  # (B, C, h, w)
        s = cfg.tokens_side
        x = unroll(x.permute(0, 2, 3, 1), cfg.num_unroll, cfg.q_stride)  # (B, N, C)
        pos = unroll(self.pos_embed.view(1, s, s, -1), cfg.num_unroll, cfg.q_stride)
        x = x + pos
        if visible is not None:
            B, N, C = x.shape
            x = x.view(B, visible.shape[1], -1, C)[visible].view(B, -1, C)  # keep whole visible units
        return x

    def _levels_after(self, stage: int) -> int:
        """Unpooled levels left in the token order at the end of ``stage``."""
        return self.config.num_unroll - min(stage, self.config.q_pool)

    def forward_tokens(
        self, x: Tensor, visible: Tensor | None = None, take: set[int] | None = None
    ) -> tuple[Tensor, list[tuple[int, Tensor]]]:
        """Run the encoder. Returns the last tokens (B, N', C) and, for each stage in ``take``, its output tokens."""
        self._check(x)
        x = self.embed(x, visible)
        outs = []
        stage_of_end = {e: j for j, e in enumerate(self.config.stage_ends)}
        last = max(self.config.stage_ends[j] for j in take) if take else len(self.blocks) - 1
        for i, block in enumerate(self.blocks[: last + 1]):
            x = self._run(block, x)
            if take and stage_of_end.get(i, -1) in take:
                outs.append((stage_of_end[i], x))
        return x, outs

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, (S/32)^2, C_last) tokens; raster order once all three poolings have run."""
        return self.forward_tokens(x)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """One NCHW map per stage, in spatial (raster) order: strides 4, 8, 16, 32 of the input."""
        cfg = self.config
        _, outs = self.forward_tokens(x, take=set(range(len(cfg.stages))))
        maps = []
        for stage, t in outs:
            side = cfg.tokens_side // cfg.q_stride ** min(stage, cfg.q_pool)
            maps.append(reroll(t, (side, side), self._levels_after(stage), cfg.q_stride).permute(0, 3, 1, 2))
        return maps

    def reset_classifier(self, num_classes: int) -> None:
        self.config.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # --- training helpers ---------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def num_layer_ids(self) -> int:
        return len(self.blocks) + 2  # patch embed + position embedding, every block, head

    def layer_id(self, name: str) -> int:
        if name.startswith(("patch_embed.", "pos_embed")):
            return 0
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            return 1 + int(m[1])
        return self.num_layer_ids() - 1

    # --- checkpoints --------------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return convert_checkpoint(state_dict, self)


# ---------------------------------------------------------------------------------------------------------------
# Variants (timm names; default weights: timm's copies of the official MAE-pretrained, IN-1k fine-tuned models)
# ---------------------------------------------------------------------------------------------------------------
SIZES: dict[str, dict] = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2)),
    "base": dict(embed_dim=96, num_heads=1, stages=(2, 3, 16, 3)),
    "base_plus": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3)),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4)),
    "huge": dict(embed_dim=256, num_heads=4, stages=(2, 6, 36, 4)),
}


def _register(size: str) -> None:
    name = f"hiera_{size}_224"

    def variant() -> HieraConfig:
        return HieraConfig(**SIZES[size])

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = f"Hiera-{size} at 224x224 (MAE IN-1k pretrained, IN-1k fine-tuned weights)."
    register_model(Hiera, weights=f"timm/{name}.mae_in1k_ft_in1k", family="hiera")(variant)


for _size in SIZES:
    _register(_size)


@register_model(Hiera, family="hiera")
def hiera_nano() -> HieraConfig:
    """A small extra variant for quick experiments, demos and tests (not a released model): 64 px, widths
    32-64-128-256, depths 1-1-2-1. Tokens 16x16 -> 2x2, mask units 2x2."""
    return HieraConfig(embed_dim=32, num_heads=1, stages=(1, 1, 2, 1), img_size=64)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint key map
# ---------------------------------------------------------------------------------------------------------------
# timm (hiera_*_224): keys equal ours.
# official hiera-transformer (hiera_*_224.pth): {"model_state": {...}} (unwrapped by bettervit.weights), classifier
#   norm at "norm.", classifier at "head.projection.".
# official MAE checkpoints (mae_hiera_*_224.pth) loaded into the classifier: the encoder keys are ours; the MAE
#   "encoder_norm" (the norm over the fused features) initialises head.norm, as timm does; the decoder, mask token
#   and fusion heads are dropped.
_MAE_ONLY = ("decoder_", "mask_token", "multi_scale_fusion_heads.")


def resize_pos_embed(pos: Tensor, side: int) -> Tensor:
    """Bicubic resize of a (1, n*n, C) raster position embedding to (1, side*side, C)."""
    n = math.isqrt(pos.shape[1])
    if n * n != pos.shape[1]:
        raise ValueError(f"position embedding with {pos.shape[1]} tokens is not a square grid")
    if n == side:
        return pos
    grid = pos.reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, side * side, -1).to(pos.dtype)


def convert_checkpoint(state_dict: dict[str, Tensor], model: Hiera) -> dict[str, Tensor]:
    """timm or official Hiera / MAE-Hiera state dict -> this classifier's keys; position embedding resized."""
    is_mae = any(k.startswith(_MAE_ONLY) for k in state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.startswith(_MAE_ONLY):
            continue
        if k.startswith("head.projection."):
            k = "head.fc." + k.removeprefix("head.projection.")
        elif k.startswith("norm."):
            k = "head." + k
        elif k.startswith("encoder_norm.") and is_mae:
            k = "head.norm." + k.removeprefix("encoder_norm.")
        if k == "pos_embed":
            v = resize_pos_embed(v, model.config.tokens_side)
        out[k] = v
    return out


from ..pretrain import mae as _mae  # noqa: E402,F401  (registers the mae_hiera_* variants)
