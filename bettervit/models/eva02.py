"""EVA-02: a plain ViT with 2-D rotary position embedding, SwiGLU and sub-LN (Fang et al. 2023, arXiv:2303.11331).

Read top to bottom: rotary tables -> attention -> SwiGLU -> block -> model -> variants -> checkpoint key map.

The architecture in one paragraph. 14x14 patches become tokens; a class token is prepended and a learned absolute
position embedding added. Every block is pre-norm (LayerNorm, eps 1e-6): attention whose queries and keys are
rotated by a 2-D RoPE (patch tokens only, the class token is left alone), then a SwiGLU MLP with hidden width
int(dim * 8/3). Tiny/Small keep the SwiGLU gate and value in one packed ``fc1``; Base/Large split them
(``fc1_g``/``fc1_x``) and add a LayerNorm on the hidden layer ("sub-LN") before ``fc2``, and use separate q/k/v
projections. Queries and values have biases, keys have none. The head averages the patch tokens, applies ``fc_norm``
and a linear classifier. The MIM-pretrained ``*_224`` trunks are headless (``num_classes=0``).

RoPE at any resolution. The rotation angle of a patch at row i of an h-row grid is ``(i / h * 16) * f_k``: positions
are rescaled onto the 16x16 grid the model was pretrained on (224 / 14), so a 336 or 448 input sees the same angle
range, only sampled more finely. Tables (and the resized absolute position embedding) are computed for the actual
grid of each input and cached per grid size, so any input whose sides are multiples of 14 works.

The state_dict uses timm's key names, so timm checkpoints load as they are; ``convert_checkpoint`` maps the
official EVA-02 format (``mlp.w1/w2/w3``, ``ffn_ln``, ``q_bias``..., RoPE buffers, MIM ``mask_token``/``lm_head``)
and bettervit MIM checkpoints (``encoder.`` prefix) onto them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import onednn
from ..layers.drop import drop_path
from ..registry import register_model
from .base import Backbone

log = logging.getLogger(__name__)


@dataclass
class Eva02Config:
    img_size: int = 224  # the grid the absolute position embedding is stored at; any multiple of patch_size runs
    patch_size: int = 14
    in_chans: int = 3
    num_classes: int = 1000  # 0 = headless (forward returns fc_norm-ed pooled features)
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4 * 2 / 3  # SwiGLU hidden = int(embed_dim * mlp_ratio) = int(dim * 8/3)
    qkv_fused: bool = True  # Ti/S: one qkv matrix + q_bias/v_bias; B/L: q_proj/k_proj/v_proj
    sub_ln: bool = False  # B/L: separate gate/value SwiGLU with a LayerNorm on the hidden layer
    rope_ref_grid: int = 16  # RoPE positions are rescaled onto this grid (the pretraining grid, 224 / 14)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over blocks


# --- rotary position embedding ---------------------------------------------------------------------------------------
def rope_angles(grid: tuple[int, int], head_dim: int, ref_grid: int = 16, theta: float = 10000.0) -> Tensor:
    """Rotation angles (h*w, head_dim // 2) for a row-major grid of patch tokens.

    Each head vector is split into pairs of channels; the first half of the pairs rotates with the row coordinate,
    the second half with the column coordinate, at frequencies ``theta ** (-k / n)``, k < n = head_dim // 4.
    Coordinates are rescaled onto ``ref_grid`` (EVA's scheme for fine-tuning at other resolutions).
    """
    h, w = grid
    n = head_dim // 4
    bands = 1.0 / theta ** (torch.arange(n, dtype=torch.int64).float() / n)  # (n,)
    ys = torch.arange(h, dtype=torch.int64).float() / h * ref_grid
    xs = torch.arange(w, dtype=torch.int64).float() / w * ref_grid
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (h, w, 2)
    return (coords.unsqueeze(-1) * bands).reshape(h * w, 2 * n)  # (h*w, [row bands, column bands])


def rope_rotations(
    grid: tuple[int, int], head_dim: int, num_prefix: int = 1, ref_grid: int = 16, theta: float = 10000.0
) -> Tensor:
    """Unit complex numbers exp(i * angle), (num_prefix + h*w, head_dim // 2) complex64, for ``rotate`` below.

    Prefix tokens (the class token) get 1 + 0i, i.e. no rotation, so one multiplication rotates the whole sequence
    without slicing the class token off and concatenating it back.
    """
    ang = rope_angles(grid, head_dim, ref_grid, theta)  # (h*w, hd/2)
    ang = torch.cat([torch.zeros(num_prefix, head_dim // 2), ang])  # (N, hd/2)
    return torch.polar(torch.ones_like(ang), ang)


def rotate(x: Tensor, rot: Tensor) -> Tensor:
    """Apply RoPE to x (..., hd) real, with ``rot`` (complex, ..., hd/2) broadcasting to it.

    Channels are paired as (2j, 2j+1), timm's and EVA's interleaved layout: read as the complex number a + ib,
    the rotation by angle t, (a cos t - b sin t, b cos t + a sin t), is a single complex product (a + ib) e^{it}.
    Viewing the pairs as complex costs no copy, and the product is one pass over memory forward and one backward
    (the sin/cos/swap formulation takes three each, ~10x slower here on CPU). Half and bfloat16 have no complex
    type in PyTorch: they rotate in float32 and come back. Under torch.compile the product is written out on real
    pairs, which Inductor fuses into one kernel.
    """
    if torch.compiler.is_compiling():  # Inductor generates no complex code: the same product on real pairs, fused
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = torch.view_as_real(rot).to(x.dtype).unbind(-1)
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    if x.dtype not in (torch.float32, torch.float64):
        return rotate(x.float(), rot).to(x.dtype)
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (..., hd/2) complex, a view
    return torch.view_as_real(pairs * rot).flatten(-2)


# --- attention ---------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention with RoPE on q and k, biases on q and v only, through SDPA."""

    def __init__(self, cfg: Eva02Config) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.head_dim = dim // cfg.num_heads
        self.fused = cfg.qkv_fused
        if self.fused:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
            self.register_buffer("k_bias", torch.zeros(dim), persistent=False)  # keys have no bias
        else:
            self.q_proj = nn.Linear(dim, dim)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Tensor, residual: Tensor | None = None) -> Tensor:
        """x (B, N, C), rope = rotations (N, 1, hd/2) (see ``rotate``) -> (B, N, C) (+ ``residual``: inference only).

        RoPE is applied while tokens are still (B, N, ..., nh, hd) (the tables broadcast over heads), and q, k, v
        reach SDPA as (B, nh, N, hd) views with contiguous head vectors, the layout its fused CPU/CUDA kernels read
        directly; forcing fully contiguous copies measured ~20% slower for attention forward + backward on CPU.
        """
        B, N, C = x.shape
        nh, hd = self.num_heads, self.head_dim
        if self.fused:
            bias = torch.cat([self.q_bias, self.k_bias, self.v_bias])
            fast = residual is not None  # CPU fp32 inference (see Block.forward): the packed-weight kernel
            qkv = (onednn.linear if fast else F.linear)(x, self.qkv.weight, bias).view(B, N, 3, nh, hd)
            qk, v = qkv.split([2, 1], dim=2)  # split, not slicing: its backward is one cat, no zero-filled buffers
            qk = rotate(qk, rope.unsqueeze(1))  # (B, N, 2, nh, hd), q and k in one pass
            # unbind dim 2, then transpose: the backward stacks the two gradients straight back into (B, N, 2, nh, hd)
            q, k = (t.transpose(1, 2) for t in qk.unbind(2))  # 2 x (B, nh, N, hd)
            v = v.squeeze(2).transpose(1, 2)  # (B, nh, N, hd)
        else:
            q = rotate(self.q_proj(x).view(B, N, nh, hd), rope).transpose(1, 2)  # (B, nh, N, hd)
            k = rotate(self.k_proj(x).view(B, N, nh, hd), rope).transpose(1, 2)
            v = self.v_proj(x).view(B, N, nh, hd).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
        x = x.transpose(1, 2).reshape(B, N, C)
        if residual is not None:  # inference: projection and residual add in one oneDNN kernel
            return onednn.linear_add(x, residual, self.proj.weight, self.proj.bias)
        return self.proj(x)


# --- SwiGLU MLP ----------------------------------------------------------------------------------------------------------
class _PackedSwiGLU(torch.autograd.Function):
    """silu(gate) * value from a packed fc1 output y = [gate | value] (..., 2h) -> (..., h).

    Autograd would run ``chunk`` backward as a concatenation of the two half gradients (one more pass over the
    widest activation of the block); here both halves are written straight into one (..., 2h) tensor.
    """

    @staticmethod
    def forward(ctx, y: Tensor) -> Tensor:
        gate, value = y.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(y, act)
        return act * value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        y, act = ctx.saved_tensors
        gate, value = y.chunk(2, dim=-1)
        grad_y = torch.empty_like(y)
        grad_gate, grad_value = grad_y.chunk(2, dim=-1)
        torch.mul(grad, act, out=grad_value)
        torch.ops.aten.silu_backward.grad_input(grad * value, gate, grad_input=grad_gate)
        return grad_y


class SwiGLU(nn.Module):
    """silu(x W_g) * (x W_x), then W_2. Packed (one fc1 = [gate; value]) or split with a hidden LayerNorm (sub-LN)."""

    def __init__(self, cfg: Eva02Config) -> None:
        super().__init__()
        dim, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
        self.packed = not cfg.sub_ln
        if self.packed:
            self.fc1 = nn.Linear(dim, 2 * hidden)  # rows [0, hidden) gate, [hidden, 2*hidden) value
        else:
            self.fc1_g = nn.Linear(dim, hidden)
            self.fc1_x = nn.Linear(dim, hidden)
            self.norm = nn.LayerNorm(hidden, eps=cfg.norm_eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.packed:
            y = self.fc1(x)  # (..., 2 * hidden): [gate | value]
            if torch.is_grad_enabled() and y.requires_grad:
                return self.fc2(_PackedSwiGLU.apply(y))
            gate, value = y.chunk(2, dim=-1)
            return self.fc2(F.silu(gate) * value)
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))

    def forward_fused(self, x: Tensor, residual: Tensor) -> Tensor:
        """CPU fp32 inference: residual + forward(x); SiLU fused into the gate matmul, the gating product into the value
        matmul and the residual into fc2."""
        if self.packed:
            h = self.fc1.out_features // 2
            gate = onednn.linear(x, self.fc1.weight, self.fc1.bias, "swish", rows=(0, h))
            hidden = onednn.linear_mul(x, gate, self.fc1.weight, self.fc1.bias, rows=(h, 2 * h))  # value * gate
        else:
            gate = onednn.linear(x, self.fc1_g.weight, self.fc1_g.bias, "swish")
            hidden = self.norm(onednn.linear_mul(x, gate, self.fc1_x.weight, self.fc1_x.bias))
        return onednn.linear_add(hidden, residual, self.fc2.weight, self.fc2.bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: Eva02Config, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.drop_path = drop_path_rate

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        if onednn.usable(x) and not self.training:  # inference: residual adds fused into the output matmuls
            x = self.attn(self.norm1(x), rope, residual=x)
            return self.mlp.forward_fused(self.norm2(x), x)
        x = x + drop_path(self.attn(self.norm1(x), rope), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


# --- model -----------------------------------------------------------------------------------------------------------------
class Eva02(Backbone):
    """EVA-02 image classifier / headless MIM trunk. ``forward_features`` returns all tokens (B, 1 + h*w, C)."""

    classifier_prefixes = ("head.",)
    num_prefix_tokens = 1

    def __init__(self, config: Eva02Config) -> None:
        super().__init__()
        cfg = self.config = config
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size must be a multiple of patch_size={cfg.patch_size}, got {cfg.img_size}")
        if cfg.embed_dim % cfg.num_heads or (cfg.embed_dim // cfg.num_heads) % 4:
            raise ValueError(f"embed_dim / num_heads must be a multiple of 4, got {cfg.embed_dim}/{cfg.num_heads}")
        dim = cfg.embed_dim
        self.grid = (cfg.img_size // cfg.patch_size,) * 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cfg.in_chans, dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.fc_norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._rope_cache: dict[tuple, Tensor] = {}
        self._pos_cache: dict[tuple, tuple[int, Tensor]] = {}
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """BEiT/EVA init: trunc-normal(0.02) linears and tokens, output projections scaled by 1/sqrt(2 * layer)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for i, blk in enumerate(self.blocks):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))
        if isinstance(self.head, nn.Linear):
            self.head.weight.mul_(0.001)

    # --- position embeddings for the actual grid ------------------------------------------------------------------
    def rope(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """RoPE rotations (1 + h*w, 1, hd/2) for ``grid`` (complex, double precision for float64 models), built once
        per (grid, device, dtype)."""
        key = (grid, device, dtype)
        if key not in self._rope_cache:
            c = self.config
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable by autograd later
                rot = rope_rotations(grid, c.embed_dim // c.num_heads, self.num_prefix_tokens, c.rope_ref_grid,
                                     c.rope_theta)
                rot = rot.to(device, torch.complex128 if dtype == torch.float64 else torch.complex64)
                self._rope_cache[key] = rot.unsqueeze(1)  # broadcasts over heads
        return self._rope_cache[key]

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The absolute position embedding at ``grid``: stored grid as is, else bicubic-resized (cached w/o grad)."""
        if grid == self.grid:
            return self.pos_embed
        if torch.is_grad_enabled() and self.pos_embed.requires_grad:
            return resize_pos_embed(self.pos_embed, grid, self.grid, self.num_prefix_tokens)
        key = (grid, self.pos_embed.device, self.pos_embed.dtype)
        hit = self._pos_cache.get(key)
        if hit is None or hit[0] != self.pos_embed._version:
            hit = (self.pos_embed._version, resize_pos_embed(self.pos_embed, grid, self.grid, self.num_prefix_tokens))
            self._pos_cache[key] = hit
        return hit[1]

    def _apply(self, fn, recurse=True):
        self._rope_cache.clear()  # tables follow the module's device / dtype
        self._pos_cache.clear()
        return super()._apply(fn, recurse)

    # --- forward ----------------------------------------------------------------------------------------------------
    def embed(self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None) -> tuple[Tensor, tuple]:
        """Images -> (tokens (B, 1 + h*w, C) with class token and position embedding, grid (h, w)).

        ``mask`` (B, h*w) bool, True = masked: those patch embeddings are replaced by ``mask_token`` (1, 1, C) before
        the position embedding is added (BEiT / EVA-02 masked image modeling).
        """
        self.check_input(x, self.config.patch_size)
        x = self.patch_embed.proj(x)  # (B, C, h, w)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask must have shape {tuple(x.shape[:2])} (batch, patches), got {tuple(mask.shape)}")
            x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + h*w, C)
        return x + self.pos_embed_for(grid), grid

    def run_block(self, blk: Block, x: Tensor, rope: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, rope, use_reentrant=False)
        return blk(x, rope)

    def forward_features(self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W), H and W multiples of 14 -> tokens (B, 1 + h*w, C), class token first."""
        x, grid = self.embed(x, mask, mask_token)
        rope = self.rope(grid, x.device, x.dtype)
        for blk in self.blocks:
            x = self.run_block(blk, x, rope)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens -> mean of the patch tokens -> fc_norm -> (dropout, classifier unless ``pre_logits``)."""
        x = self.fc_norm(x[:, self.num_prefix_tokens:].mean(dim=1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> list[Tensor]:
        """Patch-token maps (B, C, h, w) after the chosen blocks, in block order.

        ``indices``: block indices (negative count from the end), or an int n for the last n blocks. Default: four
        evenly spaced blocks ending with the last (2, 5, 8, 11 for 12 blocks), as ViTDet / ViT-Adapter use.
        """
        depth = len(self.blocks)
        if indices is None:
            step = depth // 4
            indices = [step * (i + 1) - 1 for i in range(4)]
        elif isinstance(indices, int):
            if not 1 <= indices <= depth:
                raise ValueError(f"indices: expected 1..{depth} last blocks, got {indices}")
            indices = list(range(depth - indices, depth))
        take = sorted({i % depth if -depth <= i < depth else _bad_index(i, depth) for i in indices})
        x, grid = self.embed(x)
        rope = self.rope(grid, x.device, x.dtype)
        out = []
        for i, blk in enumerate(self.blocks[: take[-1] + 1]):
            x = self.run_block(blk, x, rope)
            if i in take:
                t = x[:, self.num_prefix_tokens:]  # (B, h*w, C)
                out.append(t.transpose(1, 2).reshape(x.shape[0], -1, *grid))  # (B, C, h, w)
        return out

    # --- training helpers -------------------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (0 = none, forward returns pooled features)."""
        dim = self.config.embed_dim
        ref = self.fc_norm.weight
        self.head = nn.Linear(dim, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else nn.Identity()
        self.config = dataclasses.replace(self.config, num_classes=num_classes)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def num_layer_ids(self) -> int:
        return len(self.blocks) + 2

    def layer_id(self, name: str) -> int:
        """0: patch embedding, class token, position embedding; i + 1: block i; depth + 1: fc_norm and head."""
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """timm, official EVA-02 (fine-tuned or MIM) or bettervit-MIM checkpoints -> this model's keys and sizes."""
        return convert_eva02_checkpoint(state_dict, self)


def _bad_index(i: int, depth: int) -> int:
    raise ValueError(f"block index {i} out of range for {depth} blocks")


def resize_pos_embed(pos: Tensor, new: tuple[int, int], old: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """(1, num_prefix + oh*ow, C) -> (1, num_prefix + nh*nw, C), bicubic with antialias (timm's rule)."""
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    C = pos.shape[-1]
    grid = grid.float().reshape(1, old[0], old[1], C).permute(0, 3, 1, 2)  # (1, C, oh, ow)
    grid = F.interpolate(grid, size=new, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], C).to(pos.dtype)  # (1, nh*nw, C)
    return torch.cat([prefix, grid], dim=1)


# --- variants ----------------------------------------------------------------------------------------------------------
_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12, qkv_fused=False, sub_ln=True)
_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, qkv_fused=False, sub_ln=True)


@register_model(Eva02, weights="timm/eva02_tiny_patch14_224.mim_in22k")
def eva02_tiny_patch14_224() -> Eva02Config:
    return Eva02Config(img_size=224, num_classes=0, **_TINY)


@register_model(Eva02, weights="timm/eva02_small_patch14_224.mim_in22k")
def eva02_small_patch14_224() -> Eva02Config:
    return Eva02Config(img_size=224, num_classes=0, **_SMALL)


@register_model(Eva02, weights="timm/eva02_base_patch14_224.mim_in22k")
def eva02_base_patch14_224() -> Eva02Config:
    return Eva02Config(img_size=224, num_classes=0, **_BASE)


@register_model(Eva02, weights="timm/eva02_large_patch14_224.mim_in22k")
def eva02_large_patch14_224() -> Eva02Config:
    return Eva02Config(img_size=224, num_classes=0, **_LARGE)


@register_model(Eva02, weights="timm/eva02_tiny_patch14_336.mim_in22k_ft_in1k")
def eva02_tiny_patch14_336() -> Eva02Config:
    return Eva02Config(img_size=336, **_TINY)


@register_model(Eva02, weights="timm/eva02_small_patch14_336.mim_in22k_ft_in1k")
def eva02_small_patch14_336() -> Eva02Config:
    return Eva02Config(img_size=336, **_SMALL)


@register_model(Eva02, weights="timm/eva02_base_patch14_448.mim_in22k_ft_in22k_in1k")
def eva02_base_patch14_448() -> Eva02Config:
    return Eva02Config(img_size=448, **_BASE)


@register_model(Eva02, weights="timm/eva02_large_patch14_448.mim_in22k_ft_in22k_in1k")
def eva02_large_patch14_448() -> Eva02Config:
    return Eva02Config(img_size=448, **_LARGE)


# --- checkpoint key map ------------------------------------------------------------------------------------------------
# Official EVA-02 (baaivision/EVA, asuka/) -> timm names (= ours). Order matters: w12 before w1.
_OFFICIAL_RENAMES = (
    ("mlp.w12.", "mlp.fc1."),  # packed SwiGLU (xformers SwiGLU in Ti/S)
    ("mlp.w1.", "mlp.fc1_g."),  # gate
    ("mlp.w2.", "mlp.fc1_x."),  # value
    ("mlp.w3.", "mlp.fc2."),
    ("mlp.ffn_ln.", "mlp.norm."),  # sub-LN
)
_MIM_ONLY = ("mask_token", "lm_head.")  # pretraining parts, not in the encoder


def convert_eva02_checkpoint(sd: dict[str, Tensor], model: Eva02) -> dict[str, Tensor]:
    """Map a checkpoint onto ``model``'s keys (timm's names) and sizes.

    Handles: timm (unchanged); official EVA-02 fine-tuned and MIM checkpoints (renames above; ``q_bias``/``v_bias`` ->
    ``q_proj.bias``/``v_proj.bias`` for separate projections; RoPE buffers are dropped because they are derived;
    MIM ``mask_token``/``lm_head`` dropped and the final ``norm`` moved to ``fc_norm``, as timm does); bettervit MIM
    checkpoints (the student under ``encoder.``, everything else dropped); EVA-CLIP style ``visual.`` prefixes.
    The position embedding is resized (bicubic) when the checkpoint was made for another grid.
    """
    for prefix in ("encoder.", "visual.trunk.", "visual."):
        if any(k.startswith(prefix + "pos_embed") for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    is_mim = "mask_token" in sd or any(k.startswith("lm_head.") for k in sd)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if "rope" in k or k.endswith(("k_bias", "relative_position_index")) or k.startswith(_MIM_ONLY):
            continue
        if is_mim and k.startswith("norm."):
            k = "fc_norm." + k[len("norm."):]
        for old, new in _OFFICIAL_RENAMES:
            k = k.replace(old, new)
        if not model.config.qkv_fused:
            k = k.replace("attn.q_bias", "attn.q_proj.bias").replace("attn.v_bias", "attn.v_proj.bias")
        out[k] = v
    w = out.get("patch_embed.proj.weight")
    own_w = model.patch_embed.proj.weight
    if w is not None and w.shape[-2:] != own_w.shape[-2:]:  # e.g. 14x14 kernel -> 16x16 for ViTDet (as EVA-02 det)
        out["patch_embed.proj.weight"] = F.interpolate(w.float(), size=own_w.shape[-2:], mode="bicubic",
                                                       align_corners=False).to(w.dtype)
        log.info("resized patch embedding kernel from %s to %s", tuple(w.shape[-2:]), tuple(own_w.shape[-2:]))
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        n_old = pos.shape[1] - model.num_prefix_tokens
        side = math.isqrt(n_old)
        if side * side != n_old or pos.shape[-1] != model.pos_embed.shape[-1]:
            raise ValueError(f"pos_embed {tuple(pos.shape)} is not a square grid of width {model.config.embed_dim}")
        out["pos_embed"] = resize_pos_embed(pos, model.grid, (side, side), model.num_prefix_tokens)
        log.info("resized pos_embed from %dx%d to %dx%d", side, side, *model.grid)
    return out
