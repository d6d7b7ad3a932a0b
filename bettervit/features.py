"""``create_model(..., features_only=True)``: a backbone that returns a list of feature maps, as timm's.

The wrapper keeps the model whole under ``.model`` (so its weights load as usual), prunes what no requested level
needs (``prune_intermediate_layers``: later blocks, final norm, head) and calls ``forward_intermediates``. Its
``feature_info`` answers ``channels()``, ``reduction()``, ``module_name()`` and ``get_dicts()`` for the requested
levels, the way detection and segmentation frameworks written for timm read a backbone.

As timm's feature wrappers, the wrapper has a ``return_layers`` dict (module name -> level index as a string): a
caller may set it to other levels for one call, as Hugging Face transformers' ``TimmBackbone`` does to collect every
level for ``output_hidden_states=True``. Levels deeper than the pruned model keeps are left out of the output, as
timm's ``FeatureListNet`` leaves them out.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from torch import Tensor, nn

# feature_cls names create_model accepts: each gives this module's FeatureGetter ("dict": a dict keyed by level index)
FEATURE_CLS = ("getter", "list", "dict")

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
    blocks after the deepest requested level, the head, and (unless ``norm``) the final norm. ``return_dict=True``
    returns ``{str(level index): map}`` (timm's ``FeatureDictNet`` keys) instead of a list.

    ``load_state_dict`` takes the wrapper's own state dict, or a checkpoint of the whole unwrapped model in any
    format its ``convert_checkpoint`` reads (what timm's ``checkpoint_path`` passes): the weights of pruned parts are
    then ignored, every weight the wrapper keeps must be there.
    """

    def __init__(
        self, model: nn.Module, out_indices: OutIndices, *, norm: bool = False, output_fmt: str = "NCHW",
        prune: bool = True, return_dict: bool = False,
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
        self.return_dict = return_dict
        # the deepest level the (pruned) model still computes
        self._depth = max(self.out_indices) if prune else len(self.feature_info) - 1
        self._take = list(self.out_indices)
        self.register_load_state_dict_pre_hook(_whole_model_checkpoint)

    @property
    def return_layers(self) -> dict[str, str]:
        """{module name: level index as a string} of the levels ``forward`` returns (timm's feature wrappers')."""
        return {self.feature_info.info[i]["module"]: str(i) for i in self._take}

    @return_layers.setter
    def return_layers(self, layers: dict[str, Any]) -> None:
        by_name = {}
        for i, fi in enumerate(self.feature_info.info):
            by_name[fi["module"]] = i
            by_name[fi["module"].replace(".", "_")] = i  # timm's flattened names ("stages_0")
        unknown = [k for k in layers if k not in by_name]
        if unknown:
            raise ValueError(f"return_layers: unknown module(s) {', '.join(map(str, unknown))}; expected some of "
                             f"{', '.join(fi['module'] for fi in self.feature_info.info)}")
        levels = sorted({by_name[k] for k in layers})
        self._take = [i for i in levels if i <= self._depth]

    def forward(self, x: Tensor) -> list[Tensor] | dict[str, Tensor]:
        maps = self.model.forward_intermediates(
            x, indices=list(self._take), norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True
        )
        if self.return_dict:
            return {str(i): m for i, m in zip(self._take, maps)}
        return maps

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def _whole_model_checkpoint(module: FeatureGetter, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: a checkpoint of the unwrapped model (no ``model.`` keys) becomes the wrapper's."""
    inner = prefix + "model."
    if not state_dict or any(k.startswith(inner) for k in state_dict):
        return
    own = {k for k in module.model.state_dict()}
    ckpt = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    if not ckpt:
        return
    convert = getattr(module.model, "convert_checkpoint", None)
    ckpt = convert(ckpt) if convert is not None else ckpt
    for k in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[k]
    state_dict.update({inner + k: v for k, v in ckpt.items() if k in own})  # pruned parts' weights are dropped
