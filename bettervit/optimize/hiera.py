"""The CPU inference pass for Hiera (``bettervit.optimize``): the same math as ``bettervit.models.hiera``, with

- every block linear as a oneDNN matmul on a weight packed once (in place of the plain weight);
- GELU fused into fc1, and the residual adds fused into the attention output projection and fc2 — on a 2-core CPU
  GELU alone costs ~40% of fc1 and a residual add ~60% of fc2, both pure memory traffic over wide activations;
- mask-unit blocks with many tokens run a few thousand tokens at a time (``FastHieraBlock.chunk_tokens``).

Why chunks: a block with mask-unit attention computes every mask unit on its own, and the unit-major token order
(see ``bettervit.models.hiera.unroll``) keeps each unit's tokens contiguous, so (B, N, C) can be viewed as
(B * units, tokens per unit, C) — each unit a batch item, same result — and that batch split anywhere. At the
stride-4 stage a batch of 8 at 224 px is 25k tokens, whose 4x-wide MLP activation alone is 38 MB; in chunks of 4096
tokens the intermediates stay in cache instead of streaming through memory (those blocks ~1.3-1.7x faster on a
2-core CPU). Global-attention blocks need every token at once and are left whole.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.hiera import Hiera, HieraBlock, pool_tokens
from . import register_pass
from .onednn import PackedLinear


class FastHieraBlock(nn.Module):
    """A :class:`~bettervit.models.hiera.HieraBlock` for CPU fp32 inference. Submodule names are the block's, so
    the state dict keeps the plain model's keys."""

    chunk_tokens = 4096  # mask-unit blocks run in pieces of about this many tokens once a batch has twice as many

    def __init__(self, block: HieraBlock) -> None:
        super().__init__()
        self.dim_out, self.q_stride, self.window_size = block.dim_out, block.q_stride, block.window_size
        self.norm1, self.norm2 = block.norm1, block.norm2
        self.proj = None if block.proj is None else PackedLinear.from_linear(block.proj)
        self.attn = block.attn  # keeps its attend(); its two linears are packed
        self.attn.qkv = PackedLinear.from_linear(block.attn.qkv)
        self.attn.proj = PackedLinear.from_linear(block.attn.proj)
        self.mlp = block.mlp
        self.mlp.fc1 = PackedLinear.from_linear(block.mlp.fc1)
        self.mlp.fc2 = PackedLinear.from_linear(block.mlp.fc2)

    def forward(self, x: Tensor) -> Tensor:
        if self.attn.unit_attn and x.shape[0] * x.shape[1] >= 2 * self.chunk_tokens:
            return self._in_chunks(x)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:  # the stage's first block: residual projected and max-pooled like the queries
            x = self.proj(x_norm)
            if self.q_stride > 1:
                x = pool_tokens(x, x.shape[1] // (self.q_stride * self.window_size), self.q_stride)
        x = self.attn.proj.add(self.attn.attend(self.attn.qkv(x_norm)), x)  # x + proj(attention)
        return self.mlp.fc2.add(self.mlp.fc1.act(self.norm2(x), "gelu", "none"), x)  # x + fc2(gelu(fc1(norm2 x)))

    def _in_chunks(self, x: Tensor) -> Tensor:
        """The same block over (B * units, tokens per unit, C), a few thousand tokens at a time (see module doc)."""
        B, N, C = x.shape
        unit = self.q_stride * self.window_size  # input tokens per mask unit
        units = x.reshape(B * N // unit, unit, C)  # (B * units, unit, C): each mask unit a batch item
        per = max(1, self.chunk_tokens // unit)
        out = torch.cat([self._forward(chunk) for chunk in units.split(per)])
        return out.view(B, -1, self.dim_out)


def _replace_blocks(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, HieraBlock):
            setattr(module, name, FastHieraBlock(child))
        else:
            _replace_blocks(child)


@register_pass(Hiera)
def optimize_hiera(model: Hiera) -> Hiera:
    """Rewrite every HieraBlock of ``model`` (classifier or MAE: encoder and decoder) into a FastHieraBlock."""
    _replace_blocks(model)
    return model
