"""MaxViT: Multi-Axis Vision Transformer (Tu et al., ECCV 2022), the TensorFlow-released variants.

Every block is MBConv -> block attention -> grid attention. Block attention mixes tokens inside non-overlapping
w x w windows (local); grid attention mixes tokens that sit a stride H/w apart, one from each window (sparse global).
Both attend over w*w tokens, so a block costs O(HW) and two consecutive blocks connect every pixel to every other.

The file reads top to bottom: config -> MBConv -> attention -> MaxViT block -> model -> variants -> checkpoint key map.
Tensors in the attention half are channels-last (B, H, W, C); the convolution half is NCHW in channels_last memory,
so switching between the two is a free view. Each module has one forward, the same for training and inference, on
any device, under torch.compile and torch.export; CPU inference speed-ups (folded BatchNorm, fused oneDNN kernels,
packed weights) are a separate pass, ``bettervit.optimize`` (bettervit/optimize/maxvit.py).

Input sizes: any H x W multiple of 32, with the partition (window = grid) the model was built with; see
``PartitionAttention`` for maps that the partition does not tile.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..layers import DropPath, Mlp, NormClassifierHead
from ..registry import register_model, register_variant
from .base import Backbone, feature_take_indices, img_size_hw


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
    def partition(self) -> tuple[int, int]:
        """Window (block attention) = grid (grid attention) size, (ph, pw): img_size / 32 (7 x 7 at 224)."""
        h, w = img_size_hw(self.img_size)
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

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C', H/s, W/s)
        shortcut = self.shortcut(x)
        x = gelu_tanh(self.norm1(self.conv1_1x1(self.pre_norm(x))))  # (B, mid, H, W)
        if self.stride == 2:
            x = pad_same_s2(x)
        x = gelu_tanh(self.norm2(self.conv2_kxk(x)))  # (B, mid, H/s, W/s)
        x = self.conv3_1x1(self.se(x))
        return self.drop_path(x) + shortcut


# ---------------------------------------------------------------------------------------------------------------
# Attention over ph x pw partitions with a TF-style relative position bias
# ---------------------------------------------------------------------------------------------------------------
class RelPosBias(nn.Module):
    """A learned bias per head and per 2-D offset: table[h, dy + ph - 1, dx + pw - 1], (dy, dx) = key - query.

    ``forward`` gathers the (heads, N, N) bias for the N = ph*pw tokens of a partition (row-major) from the table.
    The offsets come from two aranges each call: a handful of tiny ops, no buffer to initialise (so meta-device
    builds need nothing after ``to_empty``), and a constant that torch.compile / torch.export fold.
    """

    def __init__(self, heads: int, partition: tuple[int, int]) -> None:
        super().__init__()
        self.partition = ph, pw = partition
        self.relative_position_bias_table = nn.Parameter(torch.zeros(heads, 2 * ph - 1, 2 * pw - 1))

    def forward(self) -> Tensor:
        t = self.relative_position_bias_table
        ph, pw = self.partition
        ys, xs = torch.arange(ph, device=t.device), torch.arange(pw, device=t.device)
        dy = ys[None, :] - ys[:, None] + ph - 1  # (query row, key row) -> table row
        dx = xs[None, :] - xs[:, None] + pw - 1  # (query col, key col) -> table col
        bias = t[:, dy[:, None, :, None], dx[None, :, None, :]]  # (heads, qy, qx, ky, kx)
        return bias.reshape(t.shape[0], ph * pw, ph * pw)  # (heads, N query, N key)


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
        # nh, nw: windows per column / row; wh, ww: position inside a window (ph x pw)
        if grid:
            self.split = "b (wh nh) (ww nw) (three heads d) -> three (b nh nw) heads (wh ww) d"
            self.merge = "b wh nh ww nw heads d"  # token order of the map: (wh nh) (ww nw)
            self.split_mask = "(wh nh) (ww nw) -> (nh nw) (wh ww)"
        else:
            self.split = "b (nh wh) (nw ww) (three heads d) -> three (b nh nw) heads (wh ww) d"
            self.merge = "b nh wh nw ww heads d"  # token order of the map: (nh wh) (nw ww)
            self.split_mask = "(nh wh) (nw ww) -> (nh nw) (wh ww)"

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The map size rounded up to whole partitions."""
        ph, pw = self.partition
        return -(-h // ph) * ph, -(-w // pw) * pw

    def attn_bias(self, h: int, w: int) -> Tensor:
        """The additive attention bias for an (h, w) map: (1, heads, N, N) where the partition tiles the map;
        else (nW, heads, N, N), the relative position bias plus -inf at each window's padded keys."""
        bias = self.rel_pos()[None]  # (1, heads, N, N)
        hp, wp = self.padded_size(h, w)
        if (hp, wp) == (h, w):
            return bias
        ph, pw = self.partition
        dev = bias.device
        real = (torch.arange(hp, device=dev) < h)[:, None] & (torch.arange(wp, device=dev) < w)[None, :]  # (hp, wp)
        real = rearrange(real, self.split_mask, wh=ph, ww=pw)  # (nW, N), windows in the order q/k/v use
        mask = torch.zeros(real.shape, device=dev, dtype=bias.dtype).masked_fill(~real, float("-inf"))
        return bias + mask[:, None, None, :]  # (nW, heads, N, N)

    def attend(self, qkv: Tensor, bias: Tensor) -> Tensor:
        """(B, H, W, 3C) projected map -> (B, H, W, C) attention output (before the output projection)."""
        B, H, W, _ = qkv.shape
        ph, pw = self.partition
        hp, wp = self.padded_size(H, W)
        padded = (hp, wp) != (H, W)
        if padded:
            qkv = pad_map(qkv, hp - H, wp - W)  # (B, hp, wp, 3C)
        q, k, v = rearrange(qkv, self.split, three=3, heads=self.heads, wh=ph, ww=pw)  # (B*nW, heads, N, hd)
        if padded:  # the mask differs per window: (B, nW, heads, N, hd) against the (nW, heads, N, N) bias
            q, k, v = (t.unflatten(0, (B, -1)) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        # Back to the map: split the window and token axes, permute (both views), then one explicit copy. The copy
        # is what a reshape would do anyway; written out, the graph does not depend on the strides SDPA's output
        # happens to have (they differ between its fused kernels and its decomposition, e.g. in ONNX export).
        batch = "b (nh nw)" if padded else "(b nh nw)"
        o = rearrange(o, f"{batch} heads (wh ww) d -> {self.merge}", b=B, nh=hp // ph, wh=ph, ww=pw)
        o = o.clone(memory_format=torch.contiguous_format).view(B, hp, wp, -1)  # (B, hp, wp, C)
        return o[:, :H, :W] if padded else o

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, H, W, C)
        # The bias is 4-D, (1, heads, N, N) rather than (heads, N, N): that lets SDPA take its fused kernels.
        return self.proj(self.attend(self.qkv(x), self.attn_bias(x.shape[1], x.shape[2])))


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
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MaxViTBlock(nn.Module):
    """MBConv -> block attention -> grid attention, at one resolution (the MBConv may downsample first)."""

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


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------
class MaxViT(Backbone):
    """Stem (stride 2) -> 4 stages of MaxViT blocks (stride 2 each) -> head.

    Feature levels, as timm numbers them for ``forward_intermediates`` / ``features_only``: 0 = stem (stride 2),
    1..4 = stages 0..3 (strides 4, 8, 16, 32). MaxViT-TF keeps its final LayerNorm in the head, so there is no norm
    after the last stage and ``norm=True`` changes nothing (as in timm).
    """

    export_dynamic_hw = False  # the padding to the partition depends on the size (see forward_features)

    classifier_prefixes = ("head.fc.",)
    default_out_indices = (0, 1, 2, 3, 4)

    def __init__(self, config: MaxViTConfig) -> None:
        super().__init__()
        h, w = img_size_hw(config.img_size)
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
        # global pool -> LayerNorm -> Linear + tanh (pre-logits) -> dropout -> Linear, as timm's MaxViT-TF head;
        # global_pool="" runs it per pixel and returns a (B, classes, H, W) map
        self.head = NormClassifierHead(self.num_features, cfg.num_classes, cfg.global_pool, cfg.drop_rate,
                                       cfg.ln_eps, pool_dim=(2, 3), hidden=cfg.head_hidden or self.num_features,
                                       channels_first=True)
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
        if torch.compiler.is_exporting() and not all(isinstance(s, int) for s in x.shape[-2:]):
            # Whether a stage's map needs padding depends on H and W, so one exported graph holds for one H x W.
            # (torch.compile with dynamic sizes is fine: it guards on the same conditions and recompiles.)
            raise ValueError("MaxViT exports with a static H x W (a dynamic batch is fine); export one size per graph")

    def _stage(self, stage: Stage, x: Tensor) -> Tensor:
        for block in stage.blocks:
            x = self.run_block(block, x)
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
        return convert_checkpoint(state_dict, self)


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
# name -> (size, resolution, default weight tag). xlarge has no ImageNet-1k-only weights: at 384/512 timm's default
# is the IN-21k fine-tuned one, and at 224 it is the IN-21k model itself, with 21843 classes (as timm builds it).
VARIANTS: dict[str, tuple[str, int, str]] = {
    "maxvit_tiny_tf_224": ("tiny", 224, "in1k"),
    "maxvit_tiny_tf_384": ("tiny", 384, "in1k"),
    "maxvit_tiny_tf_512": ("tiny", 512, "in1k"),
    "maxvit_small_tf_224": ("small", 224, "in1k"),
    "maxvit_small_tf_384": ("small", 384, "in1k"),
    "maxvit_small_tf_512": ("small", 512, "in1k"),
    "maxvit_base_tf_224": ("base", 224, "in1k"),
    "maxvit_base_tf_384": ("base", 384, "in1k"),
    "maxvit_base_tf_512": ("base", 512, "in1k"),
    "maxvit_large_tf_224": ("large", 224, "in1k"),
    "maxvit_large_tf_384": ("large", 384, "in1k"),
    "maxvit_large_tf_512": ("large", 512, "in1k"),
    "maxvit_xlarge_tf_224": ("xlarge", 224, "in21k"),
    "maxvit_xlarge_tf_384": ("xlarge", 384, "in21k_ft_in1k"),
    "maxvit_xlarge_tf_512": ("xlarge", 512, "in21k_ft_in1k"),
}
for _name, (_size, _res, _tag) in VARIANTS.items():
    register_variant(
        MaxViT, _name,
        functools.partial(MaxViTConfig, img_size=_res, num_classes=21843 if _tag == "in21k" else 1000, **_SIZES[_size]),
        f"MaxViT-{_size[0].upper()} at {_res}x{_res} (window {_res // 32}).",
        weights=f"timm/{_name}.{_tag}", family="maxvit",
    )


@register_model(MaxViT, family="maxvit", pretrained_cfg=dict(pool_size=[2, 2]))  # pool_size: img_size / 32
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


def convert_checkpoint(state_dict: dict[str, Tensor], model: MaxViT) -> dict[str, Tensor]:
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
