"""Stochastic depth (Huang et al. 2016): drop a residual branch per sample during training."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero the whole branch for a random fraction ``p`` of the samples and rescale the rest by 1 / (1 - p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
