"""The transformer MLP: Linear -> activation -> Linear (channels last)."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: Callable[[Tensor], Tensor], out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
