"""STAND-IN (eva02 branch) for the lead's bettervit/optimize/onednn.py: PackedLinear as in the shared contract,
replaced on merge."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PackedLinear(nn.Module):
    """A linear layer holding only its weight in oneDNN's packed layout (CPU fp32 inference)."""

    def __init__(self, packed: Tensor, bias: Tensor | None, in_features: int, out_features: int) -> None:
        super().__init__()
        self.packed = packed
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: tuple[int, int] | None = None) -> "PackedLinear":
        w, b = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        if rows is not None:
            w, b = w[rows[0]:rows[1]], None if b is None else b[rows[0]:rows[1]]
        packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous())
        return cls(packed, None if b is None else b.clone(), w.shape[1], w.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x, "none")

    def act(self, x: Tensor, act: str, algorithm: str = "") -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, act, [], algorithm)

    def add(self, x: Tensor, residual: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")

    def mul(self, x: Tensor, other: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "mul")
