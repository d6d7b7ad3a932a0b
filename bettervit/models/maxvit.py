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
from dataclasses import dataclass, field

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
    img_size: int = 224  # window = grid = img_size / 32
    in_chans: int = 3
    num_classes: int = 1000
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    bn_eps: float = 1e-3  # TF defaults
    ln_eps: float = 1e-5

    @property
    def window(self) -> int:
        return self.img_size // 32


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
    """A learned bias per head and per 2-D offset: table[h, dy + w - 1, dx + w - 1], dy/dx = key - query.

    The (heads, N, N) bias for N = w*w tokens is a gather from the table through a fixed index built once per
    window size. In inference (no grad) the gathered bias itself is cached and rebuilt only when the table changes.
    """

    def __init__(self, heads: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros(heads, 2 * window - 1, 2 * window - 1))
        self._index: Tensor | None = None  # built lazily per device (not a buffer, so meta-device builds stay cheap)
        self._cache = _VersionedCache()

    @staticmethod
    def _make_index(w: int) -> Tensor:
        ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()  # token n sits at (ys[n], xs[n]), row-major in the window
        dy = ys[None, :] - ys[:, None] + w - 1  # (N query, N key)
        dx = xs[None, :] - xs[:, None] + w - 1
        return (dy * (2 * w - 1) + dx).flatten()  # flat index into the (2w-1)^2 table

    def _gather(self) -> Tensor:
        t = self.relative_position_bias_table
        if self._index is None or self._index.device != t.device:
            with torch.inference_mode(False):  # a normal tensor, so training may reuse it after inference
                self._index = self._make_index(self.window).to(t.device)
        n = self.window**2
        return t.flatten(1)[:, self._index].view(t.shape[0], n, n)  # (heads, N, N)

    def forward(self) -> Tensor:
        if _use_cache(self.relative_position_bias_table):
            return self._cache.get([self.relative_position_bias_table], self._gather)
        return self._gather()


class PartitionAttention(nn.Module):
    """Multi-head self-attention inside w x w partitions of a (B, H, W, C) map: block or grid.

    Block partition: the window index is the *outer* factor of each axis, H = (nh, w): neighbours attend.
    Grid partition:  the window index is the *inner* factor, H = (w, nh): tokens H/w apart attend.
    LayerNorm and the qkv projection are per token, so they run on the whole map; a single rearrange then
    partitions q, k and v at once, and one more puts the output back.
    """

    def __init__(self, dim: int, cfg: MaxViTConfig, grid: bool) -> None:
        super().__init__()
        self.heads = dim // cfg.head_dim
        self.window = cfg.window
        self.grid = grid
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel_pos = RelPosBias(self.heads, cfg.window)
        self.proj = nn.Linear(dim, dim)
        if grid:
            self.split = "b (wh nh) (ww nw) (three heads d) -> three (b nh nw) heads (wh ww) d"
            self.merge = "(b nh nw) heads (wh ww) d -> b (wh nh) (ww nw) (heads d)"
        else:
            self.split = "b (nh wh) (nw ww) (three heads d) -> three (b nh nw) heads (wh ww) d"
            self.merge = "(b nh nw) heads (wh ww) d -> b (nh wh) (nw ww) (heads d)"

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:  # (B, H, W, C)
        """Attention output; with ``residual`` (inference only) returns residual + output from one fused kernel."""
        B, H, W, C = x.shape
        w = self.window
        q, k, v = rearrange(self.qkv(x), self.split, three=3, heads=self.heads, wh=w, ww=w)  # (B*nW, nh, N, hd)
        # A 4-D (1, heads, N, N) bias (not 3-D) lets SDPA pick its fused CPU kernel in inference (~4x faster there);
        # in training (the bias needs a gradient) it falls back to its math path, still faster than with a 3-D bias.
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.rel_pos().to(q.dtype)[None])
        o = rearrange(o, self.merge, b=B, nh=H // w, nw=W // w, wh=w, ww=w)  # (B, H, W, C)
        if residual is not None:
            return onednn.linear_add(o, residual, self.proj.weight, self.proj.bias)
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


class Head(nn.Module):
    """Global average pool -> LayerNorm -> Linear + tanh (pre-logits) -> dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, num_classes: int, cfg: MaxViTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.pre_logits = nn.Sequential()
        self.pre_logits.add_module("fc", nn.Linear(dim, hidden))
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, C, H, W) -> (B, classes)
        x = torch.tanh(self.pre_logits.fc(self.norm(x.mean((2, 3)))))
        return x if pre_logits else self.fc(self.drop(x))


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------
class MaxViT(Backbone):
    classifier_prefixes = ("head.fc.",)

    def __init__(self, config: MaxViTConfig) -> None:
        super().__init__()
        if config.img_size % 32 or config.img_size < 32:
            raise ValueError(f"MaxViT img_size must be a positive multiple of 32, got {config.img_size}")
        self.config = cfg = config
        self.stem = Stem(cfg)
        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear stochastic-depth schedule
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        dims = (cfg.stem_width,) + tuple(cfg.embed_dims)
        self.stages = nn.ModuleList(
            Stage(dims[i], dims[i + 1], d, cfg, rates[starts[i] : starts[i] + d]) for i, d in enumerate(cfg.depths)
        )
        self.num_features = cfg.embed_dims[-1]
        self.head = Head(self.num_features, cfg.head_hidden or self.num_features, cfg.num_classes, cfg)
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
    def _blocks(self):
        for stage in self.stages:
            yield from stage.blocks

    def _run(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, C_last, S/32, S/32) feature map (channels_last memory)."""
        self.check_input(x, 32, fixed=(self.config.img_size,) * 2)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        for block in self._blocks():
            x = self._run(block, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """One NCHW map per stage (strides 4, 8, 16, 32 of the input... after the stem's 2)."""
        self.check_input(x, 32, fixed=(self.config.img_size,) * 2)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        outs = []
        for stage in self.stages:
            for block in stage.blocks:
                x = self._run(block, x)
            outs.append(x.contiguous())
        return outs

    def reset_classifier(self, num_classes: int) -> None:
        self.config.num_classes = num_classes
        hidden = self.head.pre_logits.fc.out_features
        self.head.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    # --- training helpers ---------------------------------------------------------------------------------------
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
def resize_rel_pos_table(table: Tensor, window: int) -> Tensor:
    """Bicubic resize of a (heads, 2w-1, 2w-1) bias table to another window."""
    size = 2 * window - 1
    if table.shape[-1] == size and table.shape[-2] == size:
        return table
    return F.interpolate(table[None].float(), size=(size, size), mode="bicubic", align_corners=False)[0].to(table.dtype)


def convert_timm_checkpoint(state_dict: dict[str, Tensor], model: MaxViT) -> dict[str, Tensor]:
    """timm ``maxvit_*_tf_*`` state dict -> ours. Keys are identical by design; bias tables follow img_size."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith("relative_position_bias_table"):
            v = resize_rel_pos_table(v, model.config.window)
        out[k] = v
    return out
