"""EVA and EVA-02 (one file, as timm's ``eva.py``): plain ViTs, EVA-02 with 2-D rotary position embedding, SwiGLU and sub-LN (Fang et al. 2023,
arXiv:2303.11331); EVA, its predecessor, a 1B-parameter ViT-g (Fang et al., CVPR 2023, arXiv:2211.07636).

Read top to bottom: config -> rotary tables -> attention -> MLPs (SwiGLU, GELU) -> block (global or windowed) ->
model -> variants -> checkpoint key map.

The architecture in one paragraph. 14x14 patches become tokens; a class token is prepended and a learned absolute
position embedding added. Every block is pre-norm (LayerNorm, eps 1e-6): attention whose queries and keys are
rotated by a 2-D RoPE (patch tokens only, the class token is left alone), then a SwiGLU MLP with hidden width
int(dim * 8/3). Tiny/Small keep the SwiGLU gate and value in one packed ``fc1``; Base/Large split them
(``fc1_g``/``fc1_x``) and add a LayerNorm on the hidden layer ("sub-LN") before ``fc2``, and use separate q/k/v
projections. Queries and values have biases, keys have none. The head averages the patch tokens, applies ``fc_norm``
and a linear classifier (other ``global_pool`` choices put a LayerNorm ``norm`` on the tokens instead, as timm does).
The MIM-pretrained ``*_224`` trunks are headless (``num_classes=0``).

Any input size. The rotation angle of a patch at row i of an h-row grid is ``(i / h * 16) * f_k``: positions are
rescaled onto the 16x16 grid the model was pretrained on (224 / 14), so a 336 or 448 input sees the same angle range,
only sampled more finely. Tables (and the bicubic-resized absolute position embedding) are computed for the grid of
each input and cached per grid size, so any input whose sides are multiples of 14 works, square or not; with
``dynamic_img_pad=True`` other sizes are zero-padded on the right and bottom to the next multiple (timm's
``dynamic_img_size`` / ``dynamic_img_pad``).

Detection (ViTDet, Li et al. 2022; EVA-02's detection backbone). With ``window_size > 0`` the blocks attend within
non-overlapping windows of ``window_size`` x ``window_size`` tokens (the map zero-padded to whole windows), except the
few ``global_blocks``; windowed blocks use RoPE tables for one window, global blocks for the whole grid. ViTDet has no
class token (``class_token=False``). See models/vitdet.py for the feature pyramid on top.

EVA (the original; ``eva_giant_patch14_*``) is the same trunk with three differences, set by config fields: no
RoPE (``rope=False``: the learned absolute position embedding is the only position signal), a plain GELU MLP
(``mlp="gelu"``: ``fc1`` -> exact GELU -> ``fc2``, hidden width 6144 = 1408 * 6144/1408, instead of SwiGLU), and the
giant's shape (width 1408, 40 blocks, 16 heads of 88 channels). Attention is the Tiny/Small one (one fused ``qkv``
matrix, biases on queries and values only). The ImageNet classifiers (224/336/560) average the patch tokens and apply
``fc_norm``; the EVA-CLIP image tower ``eva_giant_patch14_clip_224`` takes the class token after a final ``norm`` and
projects it with ``head`` to the 1024-d CLIP embedding (timm's ``global_pool="token"``, ``num_classes=1024``).
EVA was pretrained by regressing masked CLIP features (MIM with a CLIP teacher); EVA-02 reuses that recipe with an
EVA-CLIP teacher.

The model here is the paper's math with one forward per block, for training, export and compile; CPU inference
kernels (oneDNN fusions, packed weights) are applied by ``bettervit.optimize`` (bettervit/optimize/eva02.py).

The state_dict uses timm's key names, so timm checkpoints load as they are; ``convert_checkpoint`` maps the
official EVA-02 format (``mlp.w1/w2/w3``, ``ffn_ln``, ``q_bias``..., RoPE buffers, MIM ``mask_token``/``lm_head``)
and bettervit MIM checkpoints (``encoder.`` prefix) onto them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import POOL_TYPES as BASE_POOL_TYPES
from ..layers import ResampledPosEmbedCache, check_pool_type, global_pool
from ..layers.drop import drop_path
from ..layers.pos_embed import resample_abs_pos_embed
from ..registry import register_model
from .base import Backbone, feature_take_indices, img_size_hw

log = logging.getLogger(__name__)

Rope = tuple[Tensor, Tensor]  # (cos, signed sin) tables, see rope_tables / rotate
POOL_TYPES = (*BASE_POOL_TYPES, "token")  # the class token besides the spatial pools
MLP_TYPES = ("swiglu", "gelu")


@dataclass
class EvaConfig:
    img_size: Union[int, tuple[int, int]] = 224  # the grid the absolute position embedding is stored at
    patch_size: int = 14
    in_chans: int = 3
    num_classes: int = 1000  # 0 = headless (forward returns fc_norm-ed pooled features)
    global_pool: str = "avg"  # "avg" (mean of patch tokens), "token" (class token), "max", "avgmax", "" (no pooling)
    fc_norm: bool | None = None  # LayerNorm after pooling (True) or on the tokens before it (False); None: "avg" only
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4 * 2 / 3  # MLP hidden = int(embed_dim * mlp_ratio): int(dim * 8/3) for EVA-02's SwiGLU
    qkv_fused: bool = True  # Ti/S: one qkv matrix + q_bias/v_bias; B/L: q_proj/k_proj/v_proj
    sub_ln: bool = False  # B/L: split gate/value SwiGLU with a LayerNorm on the hidden layer (GELU MLP: on its hidden)
    mlp: str = "swiglu"  # EVA-02: "swiglu"; EVA: "gelu" (fc1 -> GELU -> fc2, hidden int(embed_dim * mlp_ratio))
    rope: bool = True  # EVA-02: 2-D RoPE on queries and keys; EVA: False (absolute position embedding only)
    rope_ref_grid: int = 16  # RoPE positions are rescaled onto this grid (the pretraining grid, 224 / 14)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over blocks
    class_token: bool = True
    dynamic_img_pad: bool = False  # zero-pad inputs whose sides are not multiples of patch_size (else: ValueError)
    window_size: int = 0  # ViTDet: > 0 = attention within windows of window_size^2 tokens, except in global_blocks
    global_blocks: tuple[int, ...] = ()  # ViTDet: the blocks with global attention when window_size > 0


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


def rope_tables(
    grid: tuple[int, int], head_dim: int, num_prefix: int = 1, ref_grid: int = 16, theta: float = 10000.0
) -> Rope:
    """(cos, sin) tables, each (num_prefix + h*w, head_dim), laid out for ``rotate``.

    Channels pair up as (2j, 2j+1), timm's and EVA's interleaved layout, and pair j turns by angle t_j:
    cos = (cos t_0, cos t_0, cos t_1, cos t_1, ...) and sin = (-sin t_0, +sin t_0, -sin t_1, ...), the sign of the
    rotation matrix folded in. Prefix tokens (the class token) get cos 1, sin 0: no rotation, so the whole sequence
    is rotated at once without slicing the class token off and concatenating it back.
    """
    ang = torch.cat([torch.zeros(num_prefix, head_dim // 2), rope_angles(grid, head_dim, ref_grid, theta)])  # (N, hd/2)
    cos = ang.cos().repeat_interleave(2, dim=-1)  # (N, hd)
    sin = (ang.sin().unsqueeze(-1) * torch.tensor([-1.0, 1.0])).flatten(-2)  # (N, hd)
    return cos, sin


def rotate(x: Tensor, rope: Rope) -> Tensor:
    """RoPE on x (..., hd) with tables (cos, sin) broadcasting to it: each pair (a, b) -> (a cos - b sin, b cos + a sin).

    Written as x * cos + swap(x) * sin, swap exchanging the two channels of every pair; real arithmetic only, so it
    exports (ONNX has no complex numbers) and Inductor fuses it into one kernel. The product is taken in the tables'
    precision (float32 for half models) and returned in x's dtype.
    """
    cos, sin = rope
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (..., hd): (b0, a0, b1, a1, ...)
    return (x * cos + swapped * sin).to(x.dtype)


# --- attention ---------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention with RoPE on q and k (EVA-02; none for EVA), biases on q and v only, through SDPA."""

    def __init__(self, cfg: EvaConfig) -> None:
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

    def forward(self, x: Tensor, rope: Rope | None) -> Tensor:
        """x (B, N, C), rope = tables (N, hd) each (see ``rope_tables``), or None (EVA: no rotation) -> (B, N, C).

        RoPE is applied while tokens are still (B, N, ..., nh, hd) (the tables broadcast over heads), and q, k, v
        reach SDPA as (B, nh, N, hd) views with contiguous head vectors, the layout its fused CPU/CUDA kernels read
        directly; forcing fully contiguous copies measured ~20% slower for attention forward + backward on CPU.
        """
        B, N, C = x.shape
        nh, hd = self.num_heads, self.head_dim
        if rope is None:  # EVA: plain attention
            if self.fused:
                bias = torch.cat([self.q_bias, self.k_bias, self.v_bias])
                q, k, v = F.linear(x, self.qkv.weight, bias).view(B, N, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)
            else:  # 3 x (B, nh, N, hd)
                q, k, v = (p(x).view(B, N, nh, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
            x = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
            return self.proj(x.transpose(1, 2).reshape(B, N, C))
        cos, sin = (t.unsqueeze(-2) for t in rope)  # (N, 1, hd): broadcast over heads
        if self.fused:
            bias = torch.cat([self.q_bias, self.k_bias, self.v_bias])
            qkv = F.linear(x, self.qkv.weight, bias).view(B, N, 3, nh, hd)
            qk, v = qkv.split([2, 1], dim=2)  # split, not slicing: its backward is one cat, no zero-filled buffers
            qk = rotate(qk, (cos.unsqueeze(1), sin.unsqueeze(1)))  # (B, N, 2, nh, hd), q and k in one pass
            # unbind dim 2, then transpose: the backward stacks the two gradients straight back into (B, N, 2, nh, hd)
            q, k = (t.transpose(1, 2) for t in qk.unbind(2))  # 2 x (B, nh, N, hd)
            v = v.squeeze(2).transpose(1, 2)  # (B, nh, N, hd)
        else:
            q = rotate(self.q_proj(x).view(B, N, nh, hd), (cos, sin)).transpose(1, 2)  # (B, nh, N, hd)
            k = rotate(self.k_proj(x).view(B, N, nh, hd), (cos, sin)).transpose(1, 2)
            v = self.v_proj(x).view(B, N, nh, hd).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


# --- SwiGLU MLP ----------------------------------------------------------------------------------------------------------
class _PackedSwiGLU(torch.autograd.Function):
    """silu(gate) * value from a packed fc1 output y = [gate | value] (..., 2h) -> (..., h).

    The same math as ``F.silu(gate) * value`` on the two halves of y, with a leaner eager backward: autograd would
    compute the two half gradients and then concatenate them (``chunk``'s backward, one more pass over the widest
    activation of the block); here both halves are written straight into one (..., 2h) tensor. When traced
    (torch.compile, torch.export) the backward is written with ``cat``, which the compiler fuses away itself.
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
        if torch.compiler.is_compiling():
            return torch.cat([torch.ops.aten.silu_backward(grad * value, gate), grad * act], dim=-1)
        grad_y = torch.empty_like(y)
        grad_gate, grad_value = grad_y.chunk(2, dim=-1)
        torch.mul(grad, act, out=grad_value)
        torch.ops.aten.silu_backward.grad_input(grad * value, gate, grad_input=grad_gate)
        return grad_y


class SwiGLU(nn.Module):
    """silu(x W_g) * (x W_x), then W_2. Packed (one fc1 = [gate; value]) or split with a hidden LayerNorm (sub-LN)."""

    def __init__(self, cfg: EvaConfig) -> None:
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
            return self.fc2(_PackedSwiGLU.apply(self.fc1(x)))  # fc1 (..., 2 * hidden) = [gate | value]
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))


class GeluMlp(nn.Module):
    """EVA's MLP: fc1 -> GELU (exact, erf) -> (LayerNorm on the hidden layer if ``sub_ln``) -> fc2."""

    def __init__(self, cfg: EvaConfig) -> None:
        super().__init__()
        dim, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)  # giant: int(1408 * 6144 / 1408) = 6144
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden, eps=cfg.norm_eps) if cfg.sub_ln else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(F.gelu(self.fc1(x))))


# --- block -------------------------------------------------------------------------------------------------------------
def window_partition(x: Tensor, grid: tuple[int, int], size: int) -> Tensor:
    """Tokens (B, h*w, C) of a row-major grid -> windows (B * nw, size*size, C), the grid zero-padded on the bottom and
    right to whole windows (ViTDet pads after norm1, so padded tokens are zeros; they are not masked, as in ViTDet)."""
    B, _, C = x.shape
    h, w = grid
    ph, pw = -h % size, -w % size
    x = F.pad(x.view(B, h, w, C), (0, 0, 0, pw, 0, ph))  # (B, H, W, C), H = h + ph
    H, W = h + ph, w + pw
    x = x.view(B, H // size, size, W // size, size, C).transpose(2, 3)  # (B, H/s, W/s, s, s, C)
    return x.reshape(-1, size * size, C)


def window_unpartition(x: Tensor, grid: tuple[int, int], size: int) -> Tensor:
    """Inverse of ``window_partition``: (B * nw, size*size, C) -> (B, h*w, C), padding dropped."""
    h, w = grid
    H, W = h + (-h % size), w + (-w % size)
    C = x.shape[-1]
    x = x.view(-1, H // size, W // size, size, size, C).transpose(2, 3).reshape(-1, H, W, C)  # (B, H, W, C)
    return x[:, :h, :w].reshape(-1, h * w, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); attention over the whole sequence or,
    with ``window_size`` > 0, within windows of the token grid (ViTDet)."""

    def __init__(self, cfg: EvaConfig, drop_path_rate: float = 0.0, window_size: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg) if cfg.mlp == "swiglu" else GeluMlp(cfg)
        self.drop_path = drop_path_rate
        self.window_size = window_size

    def forward(self, x: Tensor, rope: Rope | None, grid: tuple[int, int]) -> Tensor:
        """x (B, N, C), rope: tables for the sequence (global) or for one window (None: EVA), grid: the (h, w) token
        grid."""
        y = self.norm1(x)
        if self.window_size:
            y = window_unpartition(self.attn(window_partition(y, grid, self.window_size), rope), grid, self.window_size)
        else:
            y = self.attn(y, rope)
        x = x + drop_path(y, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


# --- model -----------------------------------------------------------------------------------------------------------------
class Eva(Backbone):
    """EVA-02 image classifier / headless MIM trunk / ViTDet trunk, and EVA (``rope=False, mlp="gelu"``) classifier
    / CLIP image tower, with timm's model API.

    ``forward_features`` returns all tokens (B, num_prefix_tokens + h*w, C), class token first.
    """

    classifier_prefixes = ("head.",)
    embed_prefixes = ("cls_token", "pos_embed", "patch_embed")  # layer id 0 (layer-wise LR decay)
    default_out_indices = 3  # features_only: the last three blocks, as timm's EVA

    def __init__(self, config: EvaConfig) -> None:
        super().__init__()
        cfg = self.config = config
        p = cfg.patch_size
        img = img_size_hw(cfg.img_size)
        if img[0] % p or img[1] % p:
            raise ValueError(f"img_size must be a multiple of patch_size={p}, got {cfg.img_size}")
        if cfg.embed_dim % cfg.num_heads or (cfg.rope and (cfg.embed_dim // cfg.num_heads) % 4):
            raise ValueError(f"embed_dim / num_heads must be a whole number (a multiple of 4 with RoPE), got "
                             f"{cfg.embed_dim}/{cfg.num_heads}")
        if cfg.mlp not in MLP_TYPES:
            raise ValueError(f"mlp must be one of {MLP_TYPES}, got {cfg.mlp!r}")
        check_pool_type(cfg.global_pool, POOL_TYPES if cfg.class_token else BASE_POOL_TYPES)
        if cfg.window_size and (cfg.class_token or not all(0 <= i < cfg.depth for i in cfg.global_blocks)):
            raise ValueError("window_size > 0 (ViTDet) needs class_token=False and global_blocks within 0..depth-1, "
                             f"got class_token={cfg.class_token}, global_blocks={cfg.global_blocks}")
        dim = self.num_features = self.head_hidden_size = self.embed_dim = cfg.embed_dim
        self.num_classes, self.global_pool = cfg.num_classes, cfg.global_pool
        self.num_prefix_tokens = int(cfg.class_token)
        self.grid = (img[0] // p, img[1] // p)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cfg.in_chans, dim, p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.grid[0] * self.grid[1], dim))
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        windows = [0 if i in cfg.global_blocks else cfg.window_size for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r, ws) for r, ws in zip(rates, windows))
        self.feature_info = [dict(num_chs=dim, reduction=p, module=f"blocks.{i}") for i in range(cfg.depth)]
        use_fc_norm = cfg.global_pool == "avg" if cfg.fc_norm is None else cfg.fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(dim, eps=cfg.norm_eps)  # on all tokens
        self.fc_norm = nn.LayerNorm(dim, eps=cfg.norm_eps) if use_fc_norm else nn.Identity()  # after pooling
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._rope_cache: dict[tuple, Rope] = {}
        self._pos_cache = ResampledPosEmbedCache()
        self._register_rope_buffers()
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
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for i, blk in enumerate(self.blocks):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))
        if isinstance(self.head, nn.Linear):
            self.head.weight.mul_(0.001)

    # --- position embeddings for the actual grid ------------------------------------------------------------------
    def _build_rope(self, grid: tuple[int, int], num_prefix: int, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> Rope:
        c = self.config
        cos, sin = rope_tables(grid, c.embed_dim // c.num_heads, num_prefix, c.rope_ref_grid, c.rope_theta)
        return cos.to(device, dtype), sin.to(device, dtype)

    def _register_rope_buffers(self) -> None:
        """RoPE tables for the built grid (and for one window) as non-persistent buffers, in float32 (float64 for a
        float64 model) whatever the model is cast to: a compiled graph reads them as inputs instead of recomputing
        sin/cos inside every kernel that rotates q and k, as it would for tables built in the traced code. None
        without RoPE (EVA)."""
        if not self.config.rope:
            return
        ref = self.pos_embed
        dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
        for name, t in zip(("rope_cos", "rope_sin"), self._build_rope(self.grid, self.num_prefix_tokens, ref.device,
                                                                        dtype)):
            self.register_buffer(name, t, persistent=False)
        ws = self.config.window_size
        if ws:
            for name, t in zip(("rope_window_cos", "rope_window_sin"), self._build_rope((ws, ws), 0, ref.device, dtype)):
                self.register_buffer(name, t, persistent=False)

    def rope(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype, window: bool = False) -> Rope:
        """RoPE tables (num_prefix + h*w, hd) for ``grid`` (float64 for float64 models, else float32), or for one
        window (``window``, no prefix tokens): the buffers for the built grid, else built once per (grid, device,
        dtype) and cached (traced: built in the graph)."""
        if window:
            return self.rope_window_cos, self.rope_window_sin
        if not torch.compiler.is_exporting() and grid == self.grid:  # export: no specialisation on the grid
            return self.rope_cos, self.rope_sin
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        if torch.compiler.is_compiling():
            return self._build_rope(grid, self.num_prefix_tokens, device, table_dtype)
        key = (grid, device, table_dtype)
        if key not in self._rope_cache:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable by autograd later
                self._rope_cache[key] = self._build_rope(grid, self.num_prefix_tokens, device, table_dtype)
        return self._rope_cache[key]

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The absolute position embedding at ``grid``: stored grid as is, else bicubic-resized (cached w/o grad).

        Traced (torch.compile / torch.export) it is always resampled (an identity at the stored grid), so an export
        with a dynamic height and width does not specialise on whether the grid equals the stored one.
        """
        if not torch.compiler.is_exporting() and grid == self.grid:  # export: no specialisation on the grid
            return self.pos_embed
        return self._pos_cache.get_or_resample(self.pos_embed, grid,
                                               lambda p: self.resize_pos_embed(p, grid, self.grid))

    def resize_pos_embed(self, pos: Tensor, new: tuple[int, int], old: tuple[int, int]) -> Tensor:
        """Bicubic with antialias (timm's EVA at run time and on load), prefix entries kept."""
        return resample_abs_pos_embed(pos, new, old, self.num_prefix_tokens, antialias=True)

    def _apply(self, fn, recurse=True):
        self._rope_cache.clear()  # tables follow the module's device / dtype
        self._pos_cache.clear()
        super()._apply(fn, recurse)
        self._register_rope_buffers()  # rebuilt rather than cast: they stay float32 in a half model
        return self

    def feat_size(self, img: tuple[int, int]) -> tuple[int, int]:
        """The token grid (h, w) for an H x W input (rounded up with ``dynamic_img_pad``)."""
        p = self.config.patch_size
        if self.config.dynamic_img_pad:
            return -(-img[0] // p), -(-img[1] // p)
        return img[0] // p, img[1] // p

    # --- forward ----------------------------------------------------------------------------------------------------
    def embed(self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None) -> tuple[Tensor, tuple]:
        """Images -> (tokens (B, num_prefix + h*w, C) with class token and position embedding, grid (h, w)).

        ``mask`` (B, h*w) bool, True = masked: those patch embeddings are replaced by ``mask_token`` (1, 1, C) before
        the position embedding is added (BEiT / EVA-02 masked image modeling).
        """
        p = self.config.patch_size
        self.check_input(x, 1 if self.config.dynamic_img_pad else p)
        if self.config.dynamic_img_pad:
            x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))  # zeros on the right and bottom
        x = self.patch_embed.proj(x)  # (B, C, h, w)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask must have shape {tuple(x.shape[:2])} (batch, patches), got {tuple(mask.shape)}")
            x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + h*w, C)
        return x + self.pos_embed_for(grid), grid

    def ropes(self, grid: tuple[int, int], x: Tensor) -> tuple[Rope | None, Rope | None]:
        """RoPE tables for global blocks (the whole grid) and for windowed blocks (one window, no prefix tokens);
        (None, None) without RoPE (EVA)."""
        if not self.config.rope:
            return None, None
        rope = self.rope(grid, x.device, x.dtype)
        return rope, self.rope(grid, x.device, x.dtype, window=True) if self.config.window_size else rope

    def _run_block(self, blk: Block, x: Tensor, ropes: tuple[Rope | None, Rope | None], grid: tuple[int, int]
                   ) -> Tensor:
        """One block with the RoPE tables it needs (the window's for windowed blocks)."""
        return self.run_block(blk, x, ropes[1] if blk.window_size else ropes[0], grid)

    def forward_features(self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, num_prefix + h*w, C), class token first, after ``norm``."""
        x, grid = self.embed(x, mask, mask_token)
        ropes = self.ropes(grid, x)
        for blk in self.blocks:
            x = self._run_block(blk, x, ropes, grid)
        return self.norm(x)

    def pool(self, x: Tensor, pool_type: str | None = None) -> Tensor:
        """Tokens (B, N, C) -> (B, C) by ``global_pool`` (the class token, or avg/max over patch tokens); '' keeps all."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if not pool_type:
            return x
        if pool_type == "token":
            return x[:, 0]
        return global_pool(x[:, self.num_prefix_tokens:], pool_type, dim=1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens -> pool -> fc_norm -> (dropout, classifier unless ``pre_logits``)."""
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[Tensor, list[Any]]:
        """Block outputs, as timm's EVA: ``(final tokens after norm, [maps])``, or only the maps.

        ``indices``: None = every block, int n = the last n, a sequence picks blocks (negative from the end); maps come
        in block order. Each map is (B, C, h, w) ("NCHW") or (B, h*w, C) ("NLC") of the patch tokens, after ``norm``
        if ``norm`` (the final token norm; an identity in the avg-pool models, which normalise after pooling), paired
        with the prefix tokens (B, num_prefix, C) if ``return_prefix_tokens``. ``stop_early`` skips the blocks after
        the last one taken (the returned final tokens are then those of that block).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, grid = self.embed(x)
        npt = self.num_prefix_tokens
        ropes = self.ropes(grid, x)
        maps: list[Any] = []
        for i, blk in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = self._run_block(blk, x, ropes, grid)
            if i in take:
                y = self.norm(x) if norm else x
                t = y[:, npt:]  # (B, h*w, C)
                if output_fmt == "NCHW":
                    t = t.reshape(B, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
                maps.append((t, y[:, :npt]) if return_prefix_tokens else t)
        if intermediates_only:
            return maps
        return self.norm(x), maps

    # --- timm's model API -------------------------------------------------------------------------------------------
    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm / the head); returns the taken indices."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (0 = none: forward returns the pooled, fc_norm-ed features); ``global_pool`` also
        changes the pooling ('' = none: forward returns every token). The norm placement stays as built."""
        if global_pool is not None:
            self.global_pool = check_pool_type(global_pool, POOL_TYPES if self.cls_token is not None else BASE_POOL_TYPES)
        ref = self.pos_embed
        self.head = (nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0
                     else nn.Identity())
        self.head.train(self.training)
        self.num_classes = num_classes
        self.config = dataclasses.replace(self.config, num_classes=num_classes, global_pool=self.global_pool,
                                          fc_norm=not isinstance(self.fc_norm, nn.Identity))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise schedules, as timm: the stem, then one group per block, the norm last."""
        return dict(stem=r"^cls_token|reg_token|pos_embed|patch_embed|norm_pre",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """timm, official EVA-02 (fine-tuned or MIM) or bettervit-MIM checkpoints -> this model's keys and sizes."""
        return convert_checkpoint(state_dict, self)


def resample_patch_embed(weight: Tensor, new_size: tuple[int, int]) -> Tensor:
    """A patch-embedding kernel (O, I, ph, pw) for another patch size, by FlexiViT's pseudo-inverse resize (Beyer et
    al. 2023, as timm's ``resample_patch_embed``): with R the bicubic resize of a ph x pw patch to the new size, the
    new kernel is w' = pinv(R)^T w, so that <R x, w'> = <x, w> for every patch x: a 16-px patch of the image
    upsampled by 16/14 gives the token the 14-px kernel gave on the original."""
    old = tuple(weight.shape[-2:])
    if old == tuple(new_size):
        return weight
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float32, device=weight.device).reshape(n_old, 1, *old)
    resize = F.interpolate(basis, size=tuple(new_size), mode="bicubic", antialias=True, align_corners=False)
    resize = resize.reshape(n_old, -1).T  # (n_new, n_old): a flattened patch -> its resized version
    kernel = weight.float().flatten(2) @ torch.linalg.pinv(resize)  # (O, I, n_old) @ (n_old, n_new)
    return kernel.reshape(*weight.shape[:2], *new_size).to(weight.dtype)


# --- variants ----------------------------------------------------------------------------------------------------------
_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12, qkv_fused=False, sub_ln=True)
_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, qkv_fused=False, sub_ln=True)


@register_model(Eva, weights="timm/eva02_tiny_patch14_224.mim_in22k", family="eva02")
def eva02_tiny_patch14_224() -> EvaConfig:
    return EvaConfig(img_size=224, num_classes=0, **_TINY)


@register_model(Eva, weights="timm/eva02_small_patch14_224.mim_in22k", family="eva02")
def eva02_small_patch14_224() -> EvaConfig:
    return EvaConfig(img_size=224, num_classes=0, **_SMALL)


@register_model(Eva, weights="timm/eva02_base_patch14_224.mim_in22k", family="eva02")
def eva02_base_patch14_224() -> EvaConfig:
    return EvaConfig(img_size=224, num_classes=0, **_BASE)


@register_model(Eva, weights="timm/eva02_large_patch14_224.mim_in22k", family="eva02")
def eva02_large_patch14_224() -> EvaConfig:
    return EvaConfig(img_size=224, num_classes=0, **_LARGE)


@register_model(Eva, weights="timm/eva02_tiny_patch14_336.mim_in22k_ft_in1k", family="eva02")
def eva02_tiny_patch14_336() -> EvaConfig:
    return EvaConfig(img_size=336, **_TINY)


@register_model(Eva, weights="timm/eva02_small_patch14_336.mim_in22k_ft_in1k", family="eva02")
def eva02_small_patch14_336() -> EvaConfig:
    return EvaConfig(img_size=336, **_SMALL)


@register_model(Eva, weights="timm/eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", family="eva02")
def eva02_base_patch14_448() -> EvaConfig:
    return EvaConfig(img_size=448, **_BASE)


@register_model(Eva, weights="timm/eva02_large_patch14_448.mim_in22k_ft_in22k_in1k", family="eva02")
def eva02_large_patch14_448() -> EvaConfig:
    return EvaConfig(img_size=448, **_LARGE)


@register_model(Eva, family="eva02")
def eva02_nano() -> EvaConfig:
    """A demo-sized EVA-02 (not a released model): 56 px, width 128, 6 blocks, 4 heads; RoPE on the 4x4 grid. The
    few-label digits benchmark (benchmarks/bench_fewlabel.py) MIM-pretrains it on two CPU cores; also for tests."""
    return EvaConfig(img_size=56, embed_dim=128, depth=6, num_heads=4, rope_ref_grid=4)


# EVA (the original, ViT-g/14): no RoPE, GELU MLP of width 6144; the classifiers pool by averaging (fc_norm), the
# EVA-CLIP image tower takes the class token (final norm) and projects it to the 1024-d CLIP embedding.
_GIANT = dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408, mlp="gelu", rope=False)


@register_model(Eva, weights="timm/eva_giant_patch14_224.clip_ft_in1k", family="eva")
def eva_giant_patch14_224() -> EvaConfig:
    return EvaConfig(img_size=224, **_GIANT)


@register_model(Eva, weights="timm/eva_giant_patch14_336.clip_ft_in1k", family="eva")
def eva_giant_patch14_336() -> EvaConfig:
    return EvaConfig(img_size=336, **_GIANT)


@register_model(Eva, weights="timm/eva_giant_patch14_560.m30m_ft_in22k_in1k", family="eva")
def eva_giant_patch14_560() -> EvaConfig:
    return EvaConfig(img_size=560, **_GIANT)


@register_model(Eva, weights="timm/eva_giant_patch14_clip_224.laion400m", family="eva")
def eva_giant_patch14_clip_224() -> EvaConfig:
    return EvaConfig(img_size=224, num_classes=1024, global_pool="token", **_GIANT)


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


def convert_checkpoint(sd: dict[str, Tensor], model: Eva) -> dict[str, Tensor]:
    """Map a checkpoint onto ``model``'s keys (timm's names) and sizes.

    Handles: timm (unchanged); official EVA-02 fine-tuned and MIM checkpoints (renames above; ``q_bias``/``v_bias`` ->
    ``q_proj.bias``/``v_proj.bias`` for separate projections; RoPE buffers are dropped because they are derived;
    MIM ``mask_token``/``lm_head`` dropped and the final ``norm`` moved to ``fc_norm``, as timm does); bettervit MIM
    checkpoints (the student under ``encoder.``, everything else dropped); EVA-CLIP style ``visual.`` prefixes.
    The position embedding is resized (bicubic) when the checkpoint was made for another grid, the patch kernel
    resampled (``resample_patch_embed``) for another patch size, and the class token dropped for a ViTDet trunk.
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
        if is_mim and k.startswith("norm.") and not isinstance(model.fc_norm, nn.Identity):
            k = "fc_norm." + k[len("norm."):]
        for old, new in _OFFICIAL_RENAMES:
            k = k.replace(old, new)
        if not model.config.qkv_fused:
            k = k.replace("attn.q_bias", "attn.q_proj.bias").replace("attn.v_bias", "attn.v_proj.bias")
        out[k] = v
    if model.cls_token is None:  # ViTDet: no class token; drop it and its position-embedding entry (as EVA-02 det)
        if out.pop("cls_token", None) is not None and "pos_embed" in out:
            out["pos_embed"] = out["pos_embed"][:, 1:]
    w = out.get("patch_embed.proj.weight")
    own_w = model.patch_embed.proj.weight
    if w is not None and w.shape[-2:] != own_w.shape[-2:]:  # e.g. 14x14 kernel -> 16x16 for ViTDet (as EVA-02 det)
        out["patch_embed.proj.weight"] = resample_patch_embed(w, tuple(own_w.shape[-2:]))
        log.info("resampled patch embedding kernel from %s to %s", tuple(w.shape[-2:]), tuple(own_w.shape[-2:]))
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        n_old = pos.shape[1] - model.num_prefix_tokens
        side = math.isqrt(n_old)
        if side * side != n_old or pos.shape[-1] != model.pos_embed.shape[-1]:
            raise ValueError(f"pos_embed {tuple(pos.shape)} is not a square grid of width {model.config.embed_dim}")
        out["pos_embed"] = model.resize_pos_embed(pos, model.grid, (side, side))
        log.info("resized pos_embed from %dx%d to %dx%d", side, side, *model.grid)
    return out
