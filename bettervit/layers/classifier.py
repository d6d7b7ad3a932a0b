"""The classifier head every family shares: global pooling over the spatial (or token) axes, then norm, optional
pre-logits, dropout and a linear classifier (timm's ``NormMlpClassifierHead`` / ``ClNormMlpClassifierHead``).

One list of pool names (:data:`POOL_TYPES`), one pooling function (:func:`global_pool`) and one validator
(:func:`check_pool_type`); models with a class token add ``"token"`` to the allowed names themselves.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

#: global pooling choices: "" keeps every position, "avg" / "max" reduce, "avgmax" is the mean of the two
POOL_TYPES: tuple[str, ...] = ("", "avg", "max", "avgmax")


def check_pool_type(pool_type: str, allowed: Sequence[str] = POOL_TYPES) -> str:
    """``pool_type`` if it is one of ``allowed``, else a one-line ValueError naming the choices."""
    if pool_type not in allowed:
        raise ValueError(f"global_pool must be one of {', '.join(repr(p) for p in allowed)}, got {pool_type!r}")
    return pool_type


def global_pool(x: Tensor, pool_type: str, dim: int | tuple[int, ...]) -> Tensor:
    """Reduce ``dim`` of ``x`` by ``pool_type`` ("avg", "max", "avgmax" = 0.5 * (max + mean)); "" returns ``x``."""
    if pool_type == "avg":
        return x.mean(dim)
    if pool_type == "max":
        return x.amax(dim)
    if pool_type == "avgmax":
        return 0.5 * (x.amax(dim) + x.mean(dim))
    return x


class NormClassifierHead(nn.Module):
    """Global pool -> LayerNorm -> [Linear + tanh pre-logits] -> dropout -> Linear.

    ``pool_dim``: the axes pooled (tokens (B, N, C): 1; channels-last maps (B, H, W, C): (1, 2); channels-first
    maps (B, C, H, W): (2, 3) with ``channels_first``). With ``pool_type=""`` nothing is pooled and the head acts
    per position; a channels-first map is then returned channels-first, (B, classes, H, W). ``hidden`` adds the
    pre-logits layer (MaxViT). Parameter names: ``norm``, ``pre_logits.fc``, ``fc`` (timm's).
    """

    def __init__(self, dim: int, num_classes: int, pool_type: str, drop_rate: float, eps: float,
                 pool_dim: int | tuple[int, ...], hidden: int | None = None, channels_first: bool = False) -> None:
        super().__init__()
        self.pool_type = check_pool_type(pool_type)
        self.pool_dim, self.channels_first = pool_dim, channels_first
        self.in_features = dim
        self.norm: nn.Module = nn.LayerNorm(dim, eps=eps)
        self.pre_logits: nn.Module = nn.Sequential()
        if hidden:
            self.pre_logits.add_module("fc", nn.Linear(dim, hidden))
            self.pre_logits.add_module("act", nn.Tanh())
        self.num_features = hidden or dim  # the classifier's input width
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: str | None = None, reset_other: bool = False,
              in_features: int | None = None) -> None:
        """New classifier for ``num_classes`` (0: identity). ``reset_other`` also drops the norm and the pre-logits
        (what pruning to intermediate features leaves); only then may ``in_features`` change the input width."""
        if pool_type is not None:
            self.pool_type = check_pool_type(pool_type)
        if reset_other:
            self.norm = nn.Identity()
            self.pre_logits = nn.Sequential()
            self.num_features = self.in_features
        if in_features is not None and in_features != self.in_features:
            if not isinstance(self.norm, nn.Identity):
                raise ValueError("the head's input width can change only with its norm removed (reset_other=True)")
            self.in_features = in_features
            if len(self.pre_logits) == 0:
                self.num_features = in_features
        ref = next(self.parameters(), None)
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.fc = fc.to(ref.device, ref.dtype) if ref is not None else fc
        self.fc.train(self.training)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Features -> (B, classes) (pooled), or per position with ``pool_type=""``."""
        x = global_pool(x, self.pool_type, self.pool_dim)
        per_pixel = self.channels_first and not self.pool_type
        if per_pixel:
            x = x.permute(0, 2, 3, 1)  # (B, H, W, C): the head acts per pixel
        x = self.drop(self.pre_logits(self.norm(x)))
        if not pre_logits:
            x = self.fc(x)
        return x.permute(0, 3, 1, 2) if per_pixel else x  # (B, classes, H, W) when not pooled
