"""MaxViT CPU inference pass: ``bettervit.optimize(model)`` rewrites a MaxViT into this form.

What changes, module by module (the math is the plain model's; outputs agree to float rounding):
- Stem: its BatchNorm is folded into the first conv, and conv + GELU run as one oneDNN kernel.
- MBConv: the three BatchNorms fold into the two convolutions (pre_norm and norm1 around the 1x1 expand W1 give
  s1*W1*s0 and s1*(W1 t0) + t1; norm2 after the depthwise conv scales its kernels and becomes its bias), and each
  conv + GELU is one oneDNN kernel (a depthwise conv + GELU ~3x faster than the two apart on a 2-core CPU). A
  stride-2 block pads its narrow input instead of the 4x wider expanded map (see ``FastMBConv.forward``).
- Transformer layers: qkv, proj and the MLP linears become ``PackedLinear`` (the oneDNN-packed weight *replaces* the
  plain one); GELU is fused into fc1, and the residual adds into proj and fc2.
- The relative position bias, (1, heads, N, N) or with the padding mask (nW, heads, N, N), is gathered once per
  input size and kept: at the model's own size at optimize time, at other sizes on first use.
- A block whose widest activation (the MBConv's expanded map) would exceed ``FastMaxViTBlock.chunk_bytes`` for the
  whole batch runs a few images at a time (every op in a block acts on each image alone, so the result is the
  same). Why: glibc serves an allocation above 32 MiB (its largest mmap threshold) with fresh pages from the kernel
  on every call, and touching them for the first time costs as much as the convolution writing them: at batch 8,
  224 px, the first stride-2 block's 105 MB expanded map made its 1x1 conv run at 37 GFLOP/s against ~190 peak.
  Smaller pieces are reused from the heap, and at 12 MiB the expanded map and what the block makes of it stay in
  the 32 MiB L3 (maxvit_tiny, batch 8, 2 cores: whole batch 651 ms, 24 MiB pieces 615-623, 12 MiB 600-605).
The result is frozen: it does not follow later edits of the source model's weights (optimize again after them).
Its ``state_dict`` keeps the plain keys for the transformer layers (packed weights are written back out as plain
ones), while each MBConv and the stem hold their folded convolutions under new names (``conv1_fused``,
``conv2_fused``); load weights into the plain model, then optimize.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.base import img_size_hw
from ..models.maxvit import MaxViT, MaxViTBlock, MBConv, Stem, TransformerLayer, pad_same_s2
from . import register_pass
from .onednn import PackedLinear, conv_act


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift (per channel)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _channels_last(w: Tensor) -> Tensor:
    return w.detach().float().contiguous(memory_format=torch.channels_last)


class FusedConvGelu(nn.Module):
    """GELU(tanh)(conv2d(x) + b) as one oneDNN kernel, on a weight with BatchNorm already folded in."""

    def __init__(self, weight: Tensor, bias: Tensor, stride: int, padding: int, groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(_channels_last(weight), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, x: Tensor) -> Tensor:
        return conv_act(x, self.weight, self.bias, self.padding, self.stride, self.groups, "gelu", "tanh")


class FastStem(nn.Module):
    def __init__(self, stem: Stem) -> None:
        super().__init__()
        s, t = _bn_affine(stem.norm1)
        w = stem.conv1.weight * s[:, None, None, None]
        b = s * stem.conv1.bias + t if stem.conv1.bias is not None else t
        self.conv1_fused = FusedConvGelu(w, b, stride=2, padding=0, groups=1)
        self.conv2 = stem.conv2

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1_fused(pad_same_s2(x)))


class FastMBConv(nn.Module):
    def __init__(self, m: MBConv) -> None:
        super().__init__()
        s0, t0 = _bn_affine(m.pre_norm)
        s1, t1 = _bn_affine(m.norm1)
        s2, t2 = _bn_affine(m.norm2)
        w1 = m.conv1_1x1.weight[:, :, 0, 0]  # (mid, dim)
        w1f = (s1[:, None] * w1 * s0[None, :])[:, :, None, None]
        b1f = s1 * (w1 @ t0) + t1
        w2f = m.conv2_kxk.weight * s2[:, None, None, None]
        self.stride = m.stride
        self.shortcut = m.shortcut
        self.conv1_fused = FusedConvGelu(w1f, b1f, stride=1, padding=0, groups=1)
        self.conv2_fused = FusedConvGelu(w2f, t2, m.stride, m.conv2_kxk.padding[0], m.conv2_kxk.groups)
        self.se = m.se
        self.conv3_1x1 = m.conv3_1x1

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) channels_last
        shortcut = self.shortcut(x)
        if self.stride == 2:
            # TF "same" padding for the stride-2 depthwise conv, applied *before* the 1x1 expansion: padding the
            # narrow input is 4x less memory traffic than padding the expanded map (at batch 8 that is a fresh
            # 105 MB zero-fill + copy). The 1x1 conv maps the zero border to gelu(bias), so the border is zeroed
            # again; the depthwise conv then sees exactly pad(conv1(x)).
            x = self.conv1_fused(pad_same_s2(x))
            x[:, :, -1, :] = 0
            x[:, :, :, -1] = 0
        else:
            x = self.conv1_fused(x)
        x = self.conv2_fused(x)
        return self.conv3_1x1(self.se(x)) + shortcut


class FastTransformerLayer(nn.Module):
    """The plain layer's modules (same names) with packed linears, fused epilogues and a bias kept per size."""

    def __init__(self, layer: TransformerLayer, sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = layer.norm1, layer.attn, layer.norm2, layer.mlp
        self.attn.qkv = PackedLinear.from_linear(self.attn.qkv)
        self.attn.proj = PackedLinear.from_linear(self.attn.proj)
        self.mlp.fc1 = PackedLinear.from_linear(self.mlp.fc1)
        self.mlp.fc2 = PackedLinear.from_linear(self.mlp.fc2)
        self._bias: dict[tuple[int, int], Tensor] = {}  # (H, W) of the map -> attention bias (not in state_dict)
        for size in sizes:
            self.bias(*size)

    def bias(self, h: int, w: int) -> Tensor:
        b = self._bias.get((h, w))
        if b is None:
            b = self._bias[(h, w)] = self.attn.attn_bias(h, w).detach().contiguous()
        return b

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        o = self.attn.attend(self.attn.qkv(self.norm1(x)), self.bias(x.shape[1], x.shape[2]))
        x = self.attn.proj.add(o.contiguous(), x)  # x + proj(o), one kernel
        h = self.mlp.fc1.act(self.norm2(x), "gelu", "tanh")
        return self.mlp.fc2.add(h, x)  # x + fc2(h)


class FastMaxViTBlock(nn.Module):
    """A :class:`~bettervit.models.maxvit.MaxViTBlock` (same submodule names) that runs a large batch in pieces."""

    chunk_bytes = 12 * 2**20  # the expanded map of one piece: well below glibc's 32 MiB mmap threshold and the L3

    def __init__(self, block: MaxViTBlock, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = FastMBConv(block.conv)
        self.attn_block = FastTransformerLayer(block.attn_block, [size])
        self.attn_grid = FastTransformerLayer(block.attn_grid, [size])

    def pieces(self, x: Tensor) -> int:
        """How many pieces to split the batch of ``x`` (B, C, H, W) into."""
        B, _, H, W = x.shape
        pad = 1 if self.conv.stride == 2 else 0
        widest = B * self.conv.conv1_fused.weight.shape[0] * (H + pad) * (W + pad) * x.element_size()
        return min(B, -(-widest // self.chunk_bytes))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) channels_last memory
        n = self.pieces(x)
        if n > 1:
            return torch.cat([self._forward(piece) for piece in x.split(-(-x.shape[0] // n))])
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        x = self.conv(x).contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (B, H, W, C) view
        return self.attn_grid(self.attn_block(x)).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last memory


@register_pass(MaxViT)
def optimize_maxvit(model: MaxViT) -> MaxViT:
    """Rewrite ``model`` (eval, no grad, CPU fp32) in place into its CPU inference form; see the module docstring."""
    model.stem = FastStem(model.stem)
    h, w = img_size_hw(model.config.img_size)
    for i, stage in enumerate(model.stages):
        size = (h // 2 ** (i + 2), w // 2 ** (i + 2))  # this stage's map at the model's own input size
        stage.blocks = nn.ModuleList(FastMaxViTBlock(block, size) for block in stage.blocks)
    return model
