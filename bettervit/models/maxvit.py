"""MaxViT: Multi-Axis Vision Transformer (Tu et al., ECCV 2022), the TensorFlow-released variants.

Every block is MBConv -> block attention -> grid attention. Block attention mixes tokens inside non-overlapping
w x w windows (local); grid attention mixes tokens that sit a stride H/w apart, one from each window (sparse global).
Both attend over w*w tokens, so a block costs O(HW) and two consecutive blocks connect every pixel to every other.

The file reads top to bottom: config -> MBConv -> attention -> MaxViT block -> model -> variants -> checkpoint key map.
Tensors in the attention half are channels-last (B, H, W, C); the convolution half is NCHW in channels_last memory,
so switching between the two is a free view.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, Mlp, onednn
from ..registry import register_model
from .base import Backbone


@dataclass
class MaxViTConfig:
    embed_dims: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (2, 2, 5, 2)
    stem_width: int = 64
    head_hidden: int | None = None  # pre-logits width; None = last embed dim (all released models)
    head_dim: int = 32
    expand_ratio: float = 4.0  # MBConv hidden width = expand_ratio * output width
    se_ratio: float = 0.25  # squeeze-excite width = se_ratio * output width
    mlp_ratio: float = 4.0
    img_size: int | tuple[int, int] = 224  # (H, W) or square; the partition (window = grid) is img_size / 32
    in_chans: int = 3
    num_classes: int = 1000  # 0 = no classifier: the head ends at the pre-logits
    global_pool: str = "avg"  # "avg", "max", "avgmax", or "" = no pooling (the head runs per pixel, NCHW out)
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, linear from 0 over all blocks
    bn_eps: float = 1e-3  # TF defaults
    ln_eps: float = 1e-5

    @property
    def input_size(self) -> tuple[int, int]:
        s = self.img_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def partition(self) -> tuple[int, int]:
        """Window (block attention) = grid (grid attention) size, (ph, pw): img_size / 32 (7 x 7 at 224)."""
        h, w = self.input_size
        return h // 32, w // 32

    @property
    def window(self) -> int:
        """The partition side of a square model (7 at 224)."""
        return self.partition[0]


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def pad_same_s2(x: Tensor) -> Tensor:
    """TF "SAME" padding for a 3x3 stride-2 conv on an even-sized input: one zero row/column bottom-right only.

    MaxViT sizes are multiples of 32, so every stride-2 conv sees an even input; the padding is static.
    """
    return F.pad(x, (0, 1, 0, 1))


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift (per channel)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class _VersionedCache:
    """Caches a value computed from tensors until any of them changes (in-place updates bump ``_version``)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value = None

    def get(self, tensors: list[Tensor], compute):
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if key != self.key:
            self.value, self.key = compute(), key
        return self.value


def _use_cache(x: Tensor) -> bool:
    """Cached inference-only shortcuts apply when no gradient is needed and we are not being traced."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


# ---------------------------------------------------------------------------------------------------------------
# MBConv: BN pre-norm -> 1x1 expand -> depthwise 3x3 (stride 2 in a stage's first block) -> SE -> 1x1 project
# ---------------------------------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self, dim: int, rd: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, rd, 1)
        self.fc2 = nn.Conv2d(rd, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))


class Downsample(nn.Module):
    """Shortcut of a stride-2 MBConv: 2x2 average pool, then a 1x1 conv to the new width."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.expand(F.avg_pool2d(x, 2))


class MBConv(nn.Module):
    def __init__(self, dim: int, dim_out: int, stride: int, cfg: MaxViTConfig, drop_path: float) -> None:
        super().__init__()
        mid = int(dim_out * cfg.expand_ratio)
        self.stride = stride
        self.shortcut = Downsample(dim, dim_out) if stride == 2 else nn.Identity()
        self.pre_norm = nn.BatchNorm2d(dim, eps=cfg.bn_eps)
        self.conv1_1x1 = nn.Conv2d(dim, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid, eps=cfg.bn_eps)
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, stride=stride, padding=0 if stride == 2 else 1, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid, eps=cfg.bn_eps)
        self.se = SqueezeExcite(mid, int(cfg.se_ratio * dim_out))
        self.conv3_1x1 = nn.Conv2d(mid, dim_out, 1)
        self.drop_path = DropPath(drop_path)
        self._fused = _VersionedCache()

    def _depthwise(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.stride == 2:
            x = pad_same_s2(x)
        return F.conv2d(x, weight, bias, self.stride, self.conv2_kxk.padding, 1, self.conv2_kxk.groups)

    def _fold_bn(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Inference weights with all three BatchNorms folded into the two convolutions.

        pre_norm (x*s0 + t0) and norm1 (z*s1 + t1) wrap the 1x1 expand W1, giving s1*W1*s0 and s1*(W1 t0) + t1;
        norm2 after the depthwise conv scales its kernels and becomes its bias.
        """
        s0, t0 = _bn_affine(self.pre_norm)
        s1, t1 = _bn_affine(self.norm1)
        s2, t2 = _bn_affine(self.norm2)
        w1 = self.conv1_1x1.weight[:, :, 0, 0]  # (mid, dim)
        w1f = (s1[:, None] * w1 * s0[None, :])[:, :, None, None].contiguous(memory_format=torch.channels_last)
        b1f = s1 * (w1 @ t0) + t1
        w2f = (self.conv2_kxk.weight * s2[:, None, None, None]).contiguous(memory_format=torch.channels_last)
        return w1f, b1f, w2f, t2

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C', H/s, W/s)
        shortcut = self.shortcut(x)
        if _use_cache(x) and not self.training:
            w1, b1, w2, b2 = self._fused.get(list(self.parameters()) + list(self.buffers()), self._fold_bn)
            if onednn.usable(x):  # each conv + GELU in one oneDNN kernel
                x = onednn.conv_act(x, w1, b1, 0, 1, 1, "gelu", "tanh")
                x = pad_same_s2(x) if self.stride == 2 else x
                x = onednn.conv_act(x, w2, b2, self.conv2_kxk.padding[0], self.stride, w2.shape[0], "gelu", "tanh")
            else:
                x = gelu_tanh(F.conv2d(x, w1, b1))
                x = gelu_tanh(self._depthwise(x, w2, b2))
        else:
            x = gelu_tanh(self.norm1(self.conv1_1x1(self.pre_norm(x))))
            x = gelu_tanh(self.norm2(self._depthwise(x, self.conv2_kxk.weight, None)))
        x = self.conv3_1x1(self.se(x))
        return self.drop_path(x) + shortcut


# ---------------------------------------------------------------------------------------------------------------
# Attention over w x w partitions with a TF-style relative position bias
# ---------------------------------------------------------------------------------------------------------------
class RelPosBias(nn.Module):
    """A learned bias per head and per 2-D offset: table[h, dy + ph - 1, dx + pw - 1], (dy, dx) = key - query.

    The (heads, N, N) bias for the N = ph*pw tokens of a partition is a gather from the table through a fixed index
    built once. In inference (no grad) the gathered bias itself is cached and rebuilt only when the table changes.
    """

    def __init__(self, heads: int, partition: tuple[int, int]) -> None:
        super().__init__()
        self.partition = ph, pw = partition
        self.relative_position_bias_table = nn.Parameter(torch.zeros(heads, 2 * ph - 1, 2 * pw - 1))
        self._index: Tensor | None = None  # built lazily per device (not a buffer, so meta-device builds stay cheap)
        self._cache = _VersionedCache()

    @staticmethod
    def _make_index(ph: int, pw: int) -> Tensor:
        ys, xs = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()  # token n sits at (ys[n], xs[n]), row-major in the partition
        dy = ys[None, :] - ys[:, None] + ph - 1  # (N query, N key)
        dx = xs[None, :] - xs[:, None] + pw - 1
        return (dy * (2 * pw - 1) + dx).flatten()  # flat index into the (2ph-1) x (2pw-1) table

    def _gather(self) -> Tensor:
        t = self.relative_position_bias_table
        if self._index is None or self._index.device != t.device:
            with torch.inference_mode(False):  # a normal tensor, so training may reuse it after inference
                self._index = self._make_index(*self.partition).to(t.device)
        n = self.partition[0] * self.partition[1]
        return t.flatten(1)[:, self._index].view(t.shape[0], n, n)  # (heads, N, N)

    def forward(self) -> Tensor:
        if _use_cache(self.relative_position_bias_table):
            return self._cache.get([self.relative_position_bias_table], self._gather)
        return self._gather()


def pad_map(x: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Zeros after the last row / column of a (B, H, W, C) map. What the padding holds never reaches a real token:
    padded keys are masked in attention and padded queries are cropped away."""
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h))


class PartitionAttention(nn.Module):
    """Multi-head self-attention inside ph x pw partitions of a (B, H, W, C) map: block or grid.

    Block partition: the window index is the *outer* factor of each axis, H = (nh, ph): neighbours attend.
    Grid partition:  the window index is the *inner* factor, H = (ph, nh): tokens H/ph apart attend.
    LayerNorm and the qkv projection are per token, so they run on the whole map; a single rearrange then
    partitions q, k and v at once, and one more puts the output back.

    The partition is the one the model was built with (7 x 7 at 224) at every input size. A map that it does not
    tile (H % ph or W % pw) is padded bottom/right to the next multiple, after the qkv projection (which is per
    token, so padding the map or its projection is the same), and the padded keys get -inf in the attention bias,
    so real tokens attend to real tokens only; the padded queries' outputs are cropped off. Every partition holds
    at least one real token (the padding is shorter than a partition side), so no softmax row is all -inf. Where
    the partition tiles the map, nothing is padded or masked and the result is that of a model built at that size
    with the same partition.
    """

    def __init__(self, dim: int, cfg: MaxViTConfig, grid: bool) -> None:
        super().__init__()
        self.heads = dim // cfg.head_dim
        self.partition = cfg.partition
        self.grid = grid
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel_pos = RelPosBias(self.heads, cfg.partition)
        self.proj = nn.Linear(dim, dim)
        if grid:
            self.split = "b (wh nh) (ww nw) (three heads d) -> three (b nh nw) heads (wh ww) d"
            self.merge = "(b nh nw) heads (wh ww) d -> b (wh nh) (ww nw) (heads d)"
            self.split_mask = "(wh nh) (ww nw) -> (nh nw) (wh ww)"
        else:
            self.split = "b (nh wh) (nw ww) (three heads d) -> three (b nh nw) heads (wh ww) d"
            self.merge = "(b nh nw) heads (wh ww) d -> b (nh wh) (nw ww) (heads d)"
            self.split_mask = "(nh wh) (nw ww) -> (nh nw) (wh ww)"

    def key_mask(self, h: int, w: int, hp: int, wp: int, device: torch.device) -> Tensor:
        """(nW, 1, 1, N) additive mask: 0 for real keys, -inf for the padding of an (h, w) map padded to (hp, wp)."""
        ph, pw = self.partition
        real = (torch.arange(hp, device=device) < h)[:, None] & (torch.arange(wp, device=device) < w)[None, :]
        real = rearrange(real, self.split_mask, wh=ph, ww=pw)  # (nW, N), windows in the order q/k/v use
        zero = torch.zeros((), device=device)
        return torch.where(real, zero, float("-inf"))[:, None, None, :]

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:  # (B, H, W, C)
        """Attention output; with ``residual`` (inference only) returns residual + output from one fused kernel."""
        B, H, W, C = x.shape
        ph, pw = self.partition
        hp, wp = -(-H // ph) * ph, -(-W // pw) * pw  # padded to whole partitions
        qkv = self.qkv(x)  # (B, H, W, 3C)
        # A 4-D (1, heads, N, N) bias (not 3-D) lets SDPA pick its fused CPU kernel in inference (~4x faster there);
        # in training (the bias needs a gradient) it falls back to its math path, still faster than with a 3-D bias.
        bias = self.rel_pos().to(qkv.dtype)[None]
        padded = (hp, wp) != (H, W)
        if padded:
            qkv = pad_map(qkv, hp - H, wp - W)  # (B, hp, wp, 3C)
            bias = bias + self.key_mask(H, W, hp, wp, x.device).to(bias.dtype)  # (nW, heads, N, N)
        q, k, v = rearrange(qkv, self.split, three=3, heads=self.heads, wh=ph, ww=pw)  # (B*nW, heads, N, hd)
        if padded:  # the mask differs per window: (B, nW, heads, N, hd) against the (nW, heads, N, N) bias
            q, k, v = (t.unflatten(0, (B, -1)) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        o = rearrange(o.flatten(0, 1) if padded else o, self.merge, b=B, nh=hp // ph, nw=wp // pw, wh=ph, ww=pw)
        if padded:
            o = o[:, :H, :W]  # (B, H, W, C): the real tokens
        if residual is not None:
            return onednn.linear_add(o.contiguous(), residual, self.proj.weight, self.proj.bias)
        return self.proj(o)


class TransformerLayer(nn.Module):
    """Pre-LN: x + attn(LN(x)), then x + MLP(LN(x)), on a (B, H, W, C) map."""

    def __init__(self, dim: int, cfg: MaxViTConfig, grid: bool, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.attn = PartitionAttention(dim, cfg, grid)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), gelu_tanh)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        if onednn.usable(x) and not self.training:  # inference: fuse GELU into fc1 and the residual adds
            x = self.attn(self.norm1(x), residual=x)
            h = onednn.linear(self.norm2(x), self.mlp.fc1.weight, self.mlp.fc1.bias, "gelu", "tanh")
            return onednn.linear_add(h, x, self.mlp.fc2.weight, self.mlp.fc2.bias)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MaxViTBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, stride: int, cfg: MaxViTConfig, drop_path: float) -> None:
        super().__init__()
        self.conv = MBConv(dim, dim_out, stride, cfg, drop_path)
        self.attn_block = TransformerLayer(dim_out, cfg, grid=False, drop_path=drop_path)
        self.attn_grid = TransformerLayer(dim_out, cfg, grid=True, drop_path=drop_path)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) channels_last memory
        x = self.conv(x).contiguous(memory_format=torch.channels_last)
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view, since memory is already channels last
        x = self.attn_grid(self.attn_block(x))
        return x.permute(0, 3, 1, 2)  # (B, C, H, W), channels_last memory


class Stage(nn.Module):
    def __init__(self, dim: int, dim_out: int, depth: int, cfg: MaxViTConfig, drop_paths: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MaxViTBlock(dim if i == 0 else dim_out, dim_out, 2 if i == 0 else 1, cfg, drop_paths[i])
            for i in range(depth)
        )


class Stem(nn.Module):
    """3x3 conv stride 2 (TF same padding) -> BN + GELU -> 3x3 conv."""

    def __init__(self, cfg: MaxViTConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 3, stride=2)
        self.norm1 = nn.BatchNorm2d(cfg.stem_width, eps=cfg.bn_eps)
        self.conv2 = nn.Conv2d(cfg.stem_width, cfg.stem_width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(gelu_tanh(self.norm1(self.conv1(pad_same_s2(x)))))


_POOLS = ("", "avg", "max", "avgmax")


def global_pool_2d(x: Tensor, pool: str) -> Tensor:
    """(B, C, H, W) -> (B, C) for "avg", "max", "avgmax" (mean of the two); "" leaves the map as it is."""
    if pool == "avg":
        return x.mean((2, 3))
    if pool == "max":
        return x.amax((2, 3))
    if pool == "avgmax":
        return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
    return x


class Head(nn.Module):
    """Global pool -> LayerNorm -> Linear + tanh (pre-logits) -> dropout -> Linear.

    With ``pool=""`` nothing is pooled: norm, pre-logits and classifier act on every pixel (a 1x1-conv head) and the
    output stays a (B, classes, H, W) map. ``reset(..., reset_other=True)`` drops the norm and the pre-logits, which
    is what pruning to intermediate features leaves (the head then only pools and classifies).
    """

    def __init__(self, dim: int, hidden: int | None, num_classes: int, pool: str, drop_rate: float, eps: float) -> None:
        super().__init__()
        _check_pool(pool)
        self.pool = pool
        self.in_features = dim
        self.norm: nn.Module = nn.LayerNorm(dim, eps=eps)
        self.pre_logits: nn.Module = nn.Sequential()
        if hidden:
            self.pre_logits.add_module("fc", nn.Linear(dim, hidden))
            self.pre_logits.add_module("act", nn.Tanh())
        self.num_features = hidden or dim  # width of the pre-logits
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool: str | None = None, reset_other: bool = False,
              in_features: int | None = None) -> None:
        if pool is not None:
            _check_pool(pool)
            self.pool = pool
        if reset_other:
            self.norm = nn.Identity()
            self.pre_logits = nn.Sequential()
            self.num_features = self.in_features
        if in_features is not None and in_features != self.in_features:
            if not isinstance(self.norm, nn.Identity):
                raise ValueError("the head's input width can change only with its norm removed (reset_other=True)")
            self.in_features = in_features
            if len(self.pre_logits) == 0:
                self.num_features = in_features
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, C, H, W) -> (B, classes) [or map]
        x = global_pool_2d(x, self.pool)
        if not self.pool:
            x = x.permute(0, 2, 3, 1)  # (B, H, W, C): the head acts per pixel
        x = self.drop(self.pre_logits(self.norm(x)))
        if not pre_logits:
            x = self.fc(x)
        return x if self.pool else x.permute(0, 3, 1, 2)  # (B, classes, H, W) when not pooled


def _check_pool(pool: str) -> None:
    if pool not in _POOLS:
        raise ValueError(f"global_pool must be one of {', '.join(repr(p) for p in _POOLS)}, got {pool!r}")


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Absolute feature indices to take and the largest: None = all, int n = the last n, a sequence = those
    (negative counts from the end). One-line ValueError when out of range."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {num_features})")
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ValueError(f"feature index {idx} is out of range (0 to {num_features - 1})")
            take.append(idx)
    return take, max(take)


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------
class MaxViT(Backbone):
    """Stem (stride 2) -> 4 stages of MaxViT blocks (stride 2 each) -> head.

    Feature levels, as timm numbers them for ``forward_intermediates`` / ``features_only``: 0 = stem (stride 2),
    1..4 = stages 0..3 (strides 4, 8, 16, 32). MaxViT-TF keeps its final LayerNorm in the head, so there is no norm
    after the last stage and ``norm=True`` changes nothing (as in timm).
    """

    classifier_prefixes = ("head.fc.",)
    default_out_indices = (0, 1, 2, 3, 4)

    def __init__(self, config: MaxViTConfig) -> None:
        super().__init__()
        h, w = config.input_size
        if h % 32 or w % 32 or h < 32 or w < 32:
            raise ValueError(f"MaxViT img_size must be a positive multiple of 32, got {config.img_size}")
        self.config = cfg = config
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.stem = Stem(cfg)
        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear stochastic-depth schedule
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        dims = (cfg.stem_width,) + tuple(cfg.embed_dims)
        self.stages = nn.ModuleList(
            Stage(dims[i], dims[i + 1], d, cfg, rates[starts[i] : starts[i] + d]) for i, d in enumerate(cfg.depths)
        )
        self.feature_info = [dict(num_chs=cfg.stem_width, reduction=2, module="stem")] + [
            dict(num_chs=d, reduction=2 ** (i + 2), module=f"stages.{i}") for i, d in enumerate(cfg.embed_dims)
        ]
        self.num_features = cfg.embed_dims[-1]
        self.head = Head(self.num_features, cfg.head_hidden or self.num_features, cfg.num_classes, cfg.global_pool,
                         cfg.drop_rate, cfg.ln_eps)
        self.head_hidden_size = self.head.num_features
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RelPosBias):
            nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    # --- forward -------------------------------------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        self.check_input(x, 32)  # any H x W multiple of 32: the stem and four stages halve it five times

    def _stage(self, stage: Stage, x: Tensor) -> Tensor:
        for block in stage.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, num_features, H/32, W/32) feature map (channels_last memory).

        H and W may be any multiples of 32, whatever size the model was built for: the attention partition stays
        the built one (see ``PartitionAttention`` for maps it does not tile)."""
        self._check(x)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        for stage in self.stages:
            x = self._stage(stage, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Feature maps of the levels in ``indices`` (0 = stem, 1..4 = stages; None = all 5, an int n = the last n,
        a sequence picks, negative from the end), NCHW (channels_last memory). Returns ``(final, maps)``, where
        final is the last stage's output (the last level taken with ``stop_early``), or ``maps`` alone with
        ``intermediates_only``. ``norm`` is accepted for timm's signature; MaxViT-TF has no final norm to apply."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self._check(x)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        maps = [x] if 0 in take else []
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            x = self._stage(stage, x)
            if i in take:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last level in ``indices``; with ``prune_head`` (or when stages were dropped)
        the head becomes a plain pass-through (no pool, norm, pre-logits or classifier), as in timm. Returns the
        absolute indices."""
        take, max_index = feature_take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        self.stages = self.stages[:max_index]  # level 0 is the stem, so level i ends with stage i - 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self._reset_head(0, "", reset_other=True)
        return take

    # --- classifier ---------------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0 = none: the head ends at its tanh pre-logits);
        ``global_pool=""`` keeps the map: the head then runs per pixel and returns (B, C, H, W)."""
        self._reset_head(num_classes, global_pool)

    def _reset_head(self, num_classes: int, global_pool: str | None, reset_other: bool = False) -> None:
        self.head.reset(num_classes, global_pool, reset_other=reset_other, in_features=self.num_features)
        self.num_classes = self.config.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self.config.global_pool = global_pool
        self.head_hidden_size = self.head.num_features

    # --- training helpers ---------------------------------------------------------------------------------------
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise schedules, as timm's: the stem, then one group per stage."""
        return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)", None), (r"^norm", (99999,))])

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def num_layer_ids(self) -> int:
        return sum(self.config.depths) + 2  # stem, every block, head

    def layer_id(self, name: str) -> int:
        if name.startswith("stem."):
            return 0
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", name)
        if m:
            return 1 + sum(self.config.depths[: int(m[1])]) + int(m[2])
        return self.num_layer_ids() - 1

    # --- checkpoints --------------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return convert_timm_checkpoint(state_dict, self)


# ---------------------------------------------------------------------------------------------------------------
# Variants (timm names; weights are timm's ports of the official TF checkpoints)
# ---------------------------------------------------------------------------------------------------------------
_SIZES = {
    "tiny": dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=64),
    "small": dict(embed_dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), stem_width=64),
    "base": dict(embed_dims=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=64),
    "large": dict(embed_dims=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=128),
    "xlarge": dict(embed_dims=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=192),
}
# xlarge has no ImageNet-1k-only weights: at 384/512 timm's default is the IN-21k fine-tuned one, and at 224 it is
# the IN-21k model itself, with 21843 classes (as timm builds it).
_TAG = {"tiny": "in1k", "small": "in1k", "base": "in1k", "large": "in1k", "xlarge": "in21k_ft_in1k"}


def _register(size: str, res: int) -> None:
    name = f"maxvit_{size}_tf_{res}"

    in21k = size == "xlarge" and res == 224

    def variant() -> MaxViTConfig:
        return MaxViTConfig(img_size=res, num_classes=21843 if in21k else 1000, **_SIZES[size])

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = f"MaxViT-{size[0].upper()} at {res}x{res} (window {res // 32})."
    tag = "in21k" if in21k else _TAG[size]
    register_model(MaxViT, weights=f"timm/{name}.{tag}", family="maxvit")(variant)


for _size in _SIZES:
    for _res in (224, 384, 512):
        _register(_size, _res)


@register_model(MaxViT, family="maxvit")
def maxvit_nano() -> MaxViTConfig:
    """A small extra variant for quick experiments and tests (not a released model): 64 px, window 2."""
    return MaxViTConfig(embed_dims=(32, 64, 128, 256), depths=(1, 1, 1, 1), stem_width=32, img_size=64)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint key map: timm's maxxvit keys equal ours, so conversion only resizes what depends on img_size.
# ---------------------------------------------------------------------------------------------------------------
def resize_rel_pos_table(table: Tensor, partition: tuple[int, int]) -> Tensor:
    """Bicubic resize of a (heads, 2h-1, 2w-1) bias table to a (ph, pw) partition."""
    size = (2 * partition[0] - 1, 2 * partition[1] - 1)
    if tuple(table.shape[-2:]) == size:
        return table
    return F.interpolate(table[None].float(), size=size, mode="bicubic", align_corners=False)[0].to(table.dtype)


def convert_timm_checkpoint(state_dict: dict[str, Tensor], model: MaxViT) -> dict[str, Tensor]:
    """timm ``maxvit_*_tf_*`` state dict -> ours. Keys are identical by design; bias tables follow img_size, and a
    timm head built without pooling (1x1 convs, (out, in, 1, 1)) loads into our linears (out, in)."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith("relative_position_bias_table"):
            v = resize_rel_pos_table(v, model.config.partition)
        elif k.startswith("head.") and k.endswith(".weight") and v.ndim == 4:
            v = v.flatten(1)
        out[k] = v
    return out
