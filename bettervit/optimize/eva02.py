"""CPU inference pass for EVA-02 and EVA: the same math as models/eva02.py, on oneDNN kernels with weights packed once.

``bettervit.optimize(model)`` calls ``optimize_eva02`` on an eval copy of the model; every block is replaced by a
``FastBlock`` that holds only packed weights (``PackedLinear``: the plain ones are dropped, no second copy) and runs:

- attention: one packed q/k/v matmul (Base/Large's three projections are concatenated into one), RoPE as one
  complex product per (q, k) pair, SDPA, then the output projection with the residual add fused in;
- EVA (no RoPE, GELU MLP): the same attention without the rotation; the exact GELU fused into ``fc1``, the residual
  add into ``fc2``;
- SwiGLU: SiLU fused into the gate matmul, the gating product fused into the value matmul (Tiny/Small read the two
  halves of the packed ``fc1`` as two row ranges of one weight), the residual add fused into ``fc2``.

Why. On a 2-core CPU a oneDNN matmul on a pre-packed weight runs these shapes (a few thousand tokens x 192..4096
channels) 10-25% faster than ``F.linear``, which repacks the weight on every call, and each fused epilogue saves a
pass over the activation. The rotation: a channel pair (a, b) read as the complex number a + ib is rotated by angle t
with one product (a + ib) e^{it}, one pass over q and k where the real form takes several (complex numbers do not
export to ONNX, which is why the plain model uses the real form).

The result is for CPU fp32 inference only: no gradients, no autocast, no other device (a ValueError says so).
Windowed (ViTDet) blocks partition the residual with the tokens, so the residual add stays fused there too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from ..models.eva import Block, Eva, GeluMlp, Rope, window_partition, window_unpartition
from . import register_pass
from .onednn import PackedLinear

# RoPE table (the model's cached cos tensor) -> complex rotations e^{it}, shared by all blocks, gone with the table
_ROTATIONS = WeakIdKeyDictionary()


def complex_rotations(rope: Rope) -> Tensor:
    """The model's real (cos, signed sin) tables (N, hd) -> unit complex numbers (N, 1, hd/2), broadcasting over heads."""
    cos, sin = rope
    rot = _ROTATIONS.get(cos)
    if rot is None:
        rot = _ROTATIONS[cos] = torch.complex(cos[:, 0::2], sin[:, 1::2]).unsqueeze(1)  # sin[1::2] = +sin t
    return rot


def _check(x: Tensor) -> None:
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.requires_grad:
        raise ValueError(f"an optimized EVA(-02) runs CPU float32 inference without gradients, got {x.dtype} on "
                         f"{x.device.type}{' requiring grad' if x.requires_grad else ''}")


class FastAttention(nn.Module):
    """Attention of a ``Block`` on packed weights; ``forward(x, rope, residual)`` = residual + attention(x)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self.fused = attn.fused
        if attn.fused:
            weight = attn.qkv.weight
            bias = torch.cat([attn.q_bias, attn.k_bias, attn.v_bias])
        else:  # one matmul for the three projections
            weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            bias = torch.cat([attn.q_proj.bias, torch.zeros_like(attn.q_proj.bias), attn.v_proj.bias])
        self.qkv = PackedLinear(weight, bias)
        self.proj = PackedLinear.from_linear(attn.proj)
        self.register_state_dict_post_hook(self._plain_keys)

    @staticmethod
    def _plain_keys(module: "FastAttention", sd: dict, prefix: str, local_metadata) -> None:  # noqa: ANN001
        """state_dict post-hook: the plain ``Attention``'s keys, so the optimized model's state loads into a plain one."""
        w, b = sd.pop(prefix + "qkv.weight"), sd.pop(prefix + "qkv.bias")
        C = w.shape[0] // 3
        if module.fused:
            sd.update({prefix + "qkv.weight": w, prefix + "q_bias": b[:C], prefix + "v_bias": b[2 * C:]})
        else:
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                sd[prefix + f"{name}.weight"] = w[i * C:(i + 1) * C]
                if name != "k_proj":
                    sd[prefix + f"{name}.bias"] = b[i * C:(i + 1) * C]

    def forward(self, x: Tensor, rope: Rope | None, residual: Tensor) -> Tensor:
        B, N, C = x.shape
        nh, hd = self.num_heads, self.head_dim
        qkv = self.qkv(x).view(B, N, 3, nh, hd)
        if rope is None:  # EVA: no rotation
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, N, hd)
            x = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
            return self.proj.add(x.transpose(1, 2).reshape(B, N, C), residual)
        qk, v = qkv.split([2, 1], dim=2)
        pairs = torch.view_as_complex(qk.unflatten(-1, (-1, 2)))  # (B, N, 2, nh, hd/2) complex, a view
        qk = torch.view_as_real(pairs * complex_rotations(rope).unsqueeze(1)).flatten(-2)  # (B, N, 2, nh, hd)
        q, k = (t.transpose(1, 2) for t in qk.unbind(2))  # 2 x (B, nh, N, hd)
        x = F.scaled_dot_product_attention(q, k, v.squeeze(2).transpose(1, 2))  # (B, nh, N, hd)
        return self.proj.add(x.transpose(1, 2).reshape(B, N, C), residual)


class FastSwiGLU(nn.Module):
    """SwiGLU of a ``Block`` on packed weights; ``forward(x, residual)`` = residual + mlp(x)."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.packed = mlp.packed
        if mlp.packed:
            h = mlp.fc1.out_features // 2
            self.gate = PackedLinear.from_linear(mlp.fc1, rows=(0, h))
            self.value = PackedLinear.from_linear(mlp.fc1, rows=(h, 2 * h))
            self.norm = nn.Identity()
        else:
            self.gate = PackedLinear.from_linear(mlp.fc1_g)
            self.value = PackedLinear.from_linear(mlp.fc1_x)
            self.norm = mlp.norm
        self.fc2 = PackedLinear.from_linear(mlp.fc2)
        self.register_state_dict_post_hook(self._plain_keys)

    @staticmethod
    def _plain_keys(module: "FastSwiGLU", sd: dict, prefix: str, local_metadata) -> None:  # noqa: ANN001
        """state_dict post-hook: the plain ``SwiGLU``'s keys (``fc1`` = [gate; value] rows for Tiny/Small)."""
        gate = {k: sd.pop(prefix + f"gate.{k}") for k in ("weight", "bias")}
        value = {k: sd.pop(prefix + f"value.{k}") for k in ("weight", "bias")}
        for k in ("weight", "bias"):
            if module.packed:
                sd[prefix + f"fc1.{k}"] = torch.cat([gate[k], value[k]])
            else:
                sd[prefix + f"fc1_g.{k}"], sd[prefix + f"fc1_x.{k}"] = gate[k], value[k]

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        hidden = self.value.mul(x, self.gate.act(x, "swish"))  # (x W_x + b_x) * silu(x W_g + b_g)
        return self.fc2.add(self.norm(hidden), residual)


class FastGeluMlp(nn.Module):
    """EVA's GELU MLP on packed weights; ``forward(x, residual)`` = residual + fc2(norm(gelu(fc1(x)))). The keys stay
    the plain ``fc1`` / ``norm`` / ``fc2`` ones."""

    def __init__(self, mlp: GeluMlp) -> None:
        super().__init__()
        self.fc1 = PackedLinear.from_linear(mlp.fc1)
        self.norm = mlp.norm
        self.fc2 = PackedLinear.from_linear(mlp.fc2)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.fc2.add(self.norm(self.fc1.act(x, "gelu", "none")), residual)  # "none": exact (erf) GELU


class FastBlock(nn.Module):
    """``Block.forward`` for CPU fp32 inference: the residual adds fused into the output matmuls."""

    def __init__(self, blk: Block) -> None:
        super().__init__()
        self.norm1, self.norm2 = blk.norm1, blk.norm2
        self.attn = FastAttention(blk.attn)
        self.mlp = FastGeluMlp(blk.mlp) if isinstance(blk.mlp, GeluMlp) else FastSwiGLU(blk.mlp)
        self.window_size = blk.window_size

    def forward(self, x: Tensor, rope: Rope | None, grid: tuple[int, int]) -> Tensor:
        _check(x)
        ws = self.window_size
        if ws:  # the residual is partitioned with the tokens, so its add stays fused (padding is cropped again)
            y = self.attn(window_partition(self.norm1(x), grid, ws), rope, window_partition(x, grid, ws))
            x = window_unpartition(y, grid, ws)
        else:
            x = self.attn(self.norm1(x), rope, x)
        return self.mlp(self.norm2(x), x)


@register_pass(Eva)
def optimize_eva02(model: Eva) -> Eva:
    """Replace every block by a ``FastBlock`` (in place; ``bettervit.optimize`` hands in a copy, or the model itself
    with ``inplace=True``, and runs this only where oneDNN is available)."""
    for i, blk in enumerate(model.blocks):
        model.blocks[i] = FastBlock(blk)
    return model
