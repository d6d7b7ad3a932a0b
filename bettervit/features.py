"""``create_model(..., features_only=True)``: a backbone that returns a list of feature maps, as timm's.

The wrapper keeps the model whole under ``.model`` (so its weights load as usual), prunes what no requested level
needs (``prune_intermediate_layers``: later blocks, final norm, head) and calls ``forward_intermediates``. Its
``feature_info`` answers ``channels()``, ``reduction()`` and ``module_name()`` for the requested levels, the way
detection and segmentation frameworks written for timm read a backbone.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from torch import Tensor, nn

OutIndices = int | Sequence[int]


class FeatureInfo:
    """Per-level metadata (``num_chs``, ``reduction``, ``module``, ``index``) and the levels a wrapper outputs.

    Accessors return one value per output level when ``idx`` is None, else the value(s) at the given level index
    (or list of level indices), whatever the outputs are.
    """

    def __init__(self, feature_info: list[dict[str, Any]], out_indices: OutIndices) -> None:
        info = copy.deepcopy(list(feature_info))
        prev = 1
        for i, fi in enumerate(info):
            if fi.get("num_chs", 0) <= 0 or "module" not in fi or fi.get("reduction", 0) < prev:
                raise ValueError(f"feature_info[{i}] must have num_chs > 0, a module and a non-decreasing reduction")
            prev = fi["reduction"]
            fi.setdefault("index", i)
        if isinstance(out_indices, int):  # last n levels, as timm reads an int here
            out_indices = tuple(range(len(info) - out_indices, len(info)))
        self.out_indices = tuple(out_indices)
        self.info = info

    def from_other(self, out_indices: OutIndices) -> "FeatureInfo":
        return FeatureInfo(self.info, out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        def pick(i: int) -> dict[str, Any]:
            return self.info[i] if keys is None else {k: self.info[i][k] for k in keys}

        if idx is None:
            return [pick(i) for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [pick(i) for i in idx]
        return pick(idx)

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)


class FeatureGetter(nn.Module):
    """Wraps a backbone so that ``forward(x)`` returns the NCHW maps of ``out_indices`` (timm's index meaning: an
    int n = the last n levels, a sequence = those levels, negative from the end).

    ``norm=True`` applies the model's final norm where ``forward_intermediates`` supports it. ``prune=True`` drops the
    blocks after the deepest requested level, the head, and (unless ``norm``) the final norm.
    """

    def __init__(
        self, model: nn.Module, out_indices: OutIndices, *, norm: bool = False, output_fmt: str = "NCHW",
        prune: bool = True,
    ) -> None:
        super().__init__()
        if prune:
            # absolute indices come back: negative ones would mean something else once later levels are gone
            out_indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm)
        elif isinstance(out_indices, int):
            out_indices = tuple(range(len(model.feature_info) - out_indices, len(model.feature_info)))
        self.out_indices = tuple(out_indices)
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)
        self.model = model
        self.norm = norm
        self.output_fmt = output_fmt

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(
            x, indices=list(self.out_indices), norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)
