"""Building models by name, timm's way: ``create_model``, ``list_models``, ``list_pretrained``, ``is_model``,
``get_pretrained_cfg``.

Names are timm's (``maxvit_tiny_tf_224``), optionally with a weight tag (``maxvit_tiny_tf_224.in1k``) or a hub
prefix (``hf-hub:timm/maxvit_tiny_tf_224.in1k``). ``pretrained_cfg`` holds timm's facts about the released
weights (input size, normalisation, crop, first conv, classifier name), read from ``pretrained_cfgs.json``
(generated from timm by ``scripts/gen_pretrained_cfgs.py``); variants without released weights get their
family's defaults.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import json
import logging
import os
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

from torch import nn

from . import models as _models  # noqa: F401  (importing the model package registers every variant)
from .registry import REGISTRY, ModelEntry

log = logging.getLogger(__name__)

# Defaults for variants timm has no config for (small extras, MAE models): the family's stem conv and classifier.
_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_CLIP = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
_FAMILY_CFG = {
    "maxvit": dict(first_conv="stem.conv1", classifier="head.fc", **_IMAGENET),
    "hiera": dict(first_conv="patch_embed.proj", classifier="head.fc", **_IMAGENET),
    "eva02": dict(first_conv="patch_embed.proj", classifier="head", **_CLIP),
}
# create_model options that configure loading / wrapping rather than the architecture
_TIMM_OPTIONS = ("num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "img_size")


@lru_cache(maxsize=1)
def _timm_cfgs() -> dict[str, Any]:
    text = resources.files("bettervit").joinpath("pretrained_cfgs.json").read_text()
    return json.loads(text)["models"]


def split_name(model_name: str) -> tuple[str, str | None]:
    """``hf-hub:org/arch.tag`` / ``arch.tag`` / ``arch`` -> (arch, tag or None)."""
    name = model_name.removeprefix("hf-hub:").removeprefix("timm/")
    arch, _, tag = name.partition(".")
    return arch, tag or None


def get_entry(name: str) -> ModelEntry:
    """The registry entry of an architecture (tags allowed); a one-line ValueError with close matches if unknown."""
    arch, _ = split_name(name)
    if arch not in REGISTRY:
        close = difflib.get_close_matches(arch, list(REGISTRY), n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else "; see `bettervit models`"
        raise ValueError(f"unknown model {name!r}{hint}")
    return REGISTRY[arch]


def is_model(model_name: str) -> bool:
    """True if ``model_name`` (tag allowed) names a registered architecture."""
    return split_name(model_name)[0] in REGISTRY


def _tags(arch: str) -> dict[str, Any]:
    return _timm_cfgs().get(arch, {}).get("tags", {})


def get_pretrained_cfg(model_name: str) -> dict[str, Any]:
    """timm's pretrained config of ``arch[.tag]`` (the default tag when none is given) as a fresh dict."""
    entry = get_entry(model_name)
    arch, tag = split_name(model_name)
    tags = _tags(arch)
    if tag is None and entry.weights:
        tag = split_name(entry.weights)[1]
    if tag is not None and tags:
        if tag not in tags:
            raise ValueError(f"{arch} has no weight tag {tag!r}; known: {', '.join(sorted(tags))}")
        return copy.deepcopy(tags[tag])
    if tag is not None:
        raise ValueError(f"{arch} has no released weights, so no tag {tag!r}")
    cfg = entry.config()
    size = getattr(cfg, "img_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    out: dict[str, Any] = dict(
        architecture=arch, tag=None, hf_hub_id=None, num_classes=getattr(cfg, "num_classes", 0),
        input_size=[getattr(cfg, "in_chans", 3), h, w], interpolation="bicubic", crop_pct=0.9, crop_mode="center",
        fixed_input_size=False, **copy.deepcopy(_FAMILY_CFG.get(entry.family, _IMAGENET)),
    )
    if getattr(cfg, "num_frames", 0):  # video: (C, T, H, W), as the official Hiera video models
        out["input_size"] = [out["input_size"][0], cfg.num_frames, h, w]
    if entry.family == "hiera" and arch.startswith("mae_"):
        out["classifier"] = None
    out.update(copy.deepcopy(entry.pretrained_cfg or {}))
    out["mean"], out["std"] = list(out["mean"]), list(out["std"])
    return out


def _as_list(x: str | Sequence[str] | None) -> list[str]:
    if not x:
        return []
    return [x] if isinstance(x, str) else list(x)


def _match(name: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(fnmatch.fnmatch(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(name, p) for p in exclude)


def list_models(
    filter: str | Sequence[str] = "",
    module: str | Sequence[str] = "",
    pretrained: bool = False,
    exclude_filters: str | Sequence[str] = "",
    name_matches_cfg: bool = False,
    include_tags: bool | None = None,
) -> list[str]:
    """Registered names matching the shell-style ``filter`` (one pattern or several), sorted, as timm's.

    ``module``: family (``"maxvit"``, ``"hiera"``, ``"eva02"``); ``pretrained``: only those with released weights;
    ``include_tags`` (default: ``pretrained``): list ``arch.tag`` once per released weight instead of archs.
    """
    include, exclude = _as_list(filter), _as_list(exclude_filters)
    families = _as_list(module)
    if include_tags is None:
        include_tags = pretrained
    names: list[str] = []
    for arch, entry in REGISTRY.items():
        if families and entry.family not in families:
            continue
        tags = _tags(arch)
        if pretrained and not (entry.weights and tags):
            continue
        candidates = [f"{arch}.{t}" for t in tags] if include_tags and tags else [arch]
        if name_matches_cfg and arch not in _timm_cfgs():
            continue
        names += [n for n in candidates if _match(n, include, exclude)]
    return sorted(set(names))


def list_pretrained(filter: str | Sequence[str] = "", exclude_filters: str | Sequence[str] = "") -> list[str]:
    """``arch.tag`` for every released weight of a registered architecture."""
    return list_models(filter, pretrained=True, exclude_filters=exclude_filters, include_tags=True)


def _hub_id(entry: ModelEntry, cfg: dict[str, Any]) -> str:
    hub = cfg.get("hf_hub_id") or entry.weights
    if not hub and cfg.get("url"):
        raise ValueError(f"{entry.name}'s weights are not on the Hugging Face hub: download {cfg['url']} and pass "
                         f"the file as pretrained=PATH")
    if not hub:
        raise ValueError(f"{entry.name} has no default released weights; pass a checkpoint path or hub id")
    return hub


def create_model(
    model_name: str,
    pretrained: bool | str | os.PathLike = False,
    pretrained_cfg: dict[str, Any] | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    output_stride: int | None = None,
    feature_cls: str | type | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights, the way ``timm.create_model`` does.

    pretrained: False; True for the released weights of the name's tag (or the variant's default), through the
    huggingface_hub cache (offline once cached); a hub id; or a local .safetensors/.pth/.pt/.bin file in timm's or
    the official format. A checkpoint with another class count (or none) leaves a fresh classifier; one made at
    another image size is resized by the model's ``convert_checkpoint``; with ``in_chans`` other than the weights'
    3 the first conv is adapted (summed for 1 channel, repeated and rescaled otherwise) as timm does.

    kwargs: ``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate``, ``drop_path_rate``, ``img_size`` (int or
    (H, W)) and any field of the family's config dataclass; ``None`` values are ignored, unknown names raise.
    checkpoint_path: a local file loaded after ``pretrained`` (strict, same conversions).
    features_only: return a :class:`~bettervit.features.FeatureGetter` giving the maps of ``out_indices``
    (default: the family's, as timm's). feature_cls: ``None``, ``"getter"`` (timm's ``FeatureGetterNet``) or
    ``"list"`` give that list, ``"dict"`` a dict keyed by level index; a class is called as
    ``feature_cls(model, out_indices=...)`` (e.g. timm's ``FeatureGetterNet``). output_stride: only the model's
    natural stride is supported. ``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=PATH)`` loads that local
    file (timm's way of naming one).
    """
    from . import weights

    for unused in ("scriptable", "exportable", "no_jit"):  # timm's layer-config switches: nothing to switch here
        kwargs.pop(unused, None)
    entry = get_entry(model_name)
    cfg = copy.deepcopy(pretrained_cfg) if pretrained_cfg is not None else get_pretrained_cfg(model_name)
    cfg.update(pretrained_cfg_overlay or {})
    overrides = {k: v for k, v in kwargs.items() if v is not None}
    if "num_classes" not in overrides and cfg.get("num_classes") is not None and split_name(model_name)[1]:
        overrides["num_classes"] = cfg["num_classes"]  # an explicit tag brings its class count (timm's default)
    model = entry.model_cls(entry.config(**overrides))
    model.pretrained_cfg = _model_cfg(cfg, model)

    if pretrained is not False and pretrained is not None:
        source = (cfg.get("file") or _hub_id(entry, cfg)) if pretrained is True else pretrained
        path = weights.resolve(source, cache_dir=None if cache_dir is None else str(cache_dir))
        weights.load_into(model, weights.load_state_dict(path), source=str(path), first_conv=cfg.get("first_conv"))
    if checkpoint_path is not None:
        path = weights.resolve(checkpoint_path)
        weights.load_into(model, weights.load_state_dict(path), source=str(path), first_conv=cfg.get("first_conv"))

    if output_stride is not None:
        natural = model.feature_info[-1]["reduction"] if getattr(model, "feature_info", None) else None
        if output_stride != natural:
            raise ValueError(f"{entry.name} supports only its natural output_stride={natural}, got {output_stride}")
    return wrap_features(model, features_only, out_indices, feature_cls)


def wrap_features(model: nn.Module, features_only: bool, out_indices: Any, feature_cls: str | type | None
                  ) -> nn.Module:
    """``create_model``'s last step: the model itself, or with ``features_only`` its feature wrapper (see there),
    carrying the model's pretrained config less the classifier's fields."""
    from .features import FEATURE_CLS, FeatureGetter

    if not features_only:
        if out_indices is not None or feature_cls is not None:
            raise ValueError("out_indices and feature_cls are only used with features_only=True")
        return model
    indices = model.default_out_indices if out_indices is None else out_indices
    feature_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("num_classes", "classifier")}
    kind = "class" if isinstance(feature_cls, type) else "getter" if feature_cls is None else str(feature_cls).lower()
    if kind == "class":
        model = feature_cls(model, out_indices=indices)
    elif kind in FEATURE_CLS:
        model = FeatureGetter(model, indices, return_dict=kind == "dict")
    else:
        raise ValueError(f"feature_cls must be one of {', '.join(FEATURE_CLS)} or a class, got {feature_cls!r} "
                         f"(bettervit's models are read through forward_intermediates, timm's getter way)")
    model.pretrained_cfg = feature_cfg
    model.default_cfg = feature_cfg
    return model


def get_pretrained_cfg_value(model_name: str, cfg_key: str) -> Any:
    """One field of :func:`get_pretrained_cfg` (``None`` if the config has no such field), as timm's."""
    return get_pretrained_cfg(model_name).get(cfg_key)


_SCRIPTABLE = False


def is_scriptable() -> bool:
    """The flag :class:`set_scriptable` last set (timm's layer-config switch)."""
    return _SCRIPTABLE


class set_scriptable:
    """timm's ``set_scriptable(mode)``: sets the scriptable flag (also as a ``with`` block, restored on exit).

    A documented no-op for the models: bettervit does not support TorchScript (it targets ``torch.compile`` and
    ``torch.export``), so no layer changes with the flag; it exists so code written for timm runs unchanged.
    """

    def __init__(self, mode: bool) -> None:
        global _SCRIPTABLE
        self.prev = _SCRIPTABLE
        _SCRIPTABLE = bool(mode)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: Any) -> bool:
        global _SCRIPTABLE
        _SCRIPTABLE = self.prev
        return False


def _model_cfg(cfg: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """The pretrained config as attached to a built model: input size and class count follow the model."""
    out = copy.deepcopy(cfg)
    config = getattr(model, "config", None)
    size = getattr(config, "img_size", None)
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        frames = [int(config.num_frames)] if getattr(config, "num_frames", 0) else []  # video: (C, T, H, W)
        out["input_size"] = [getattr(config, "in_chans", 3), *frames, int(h), int(w)]
        info = getattr(model, "feature_info", None)
        if "pool_size" in out and info:  # the final map's grid at the built input size (what forward_features gives)
            r = info[-1]["reduction"]
            out["pool_size"] = [int(h) // r, int(w) // r]
    if hasattr(model, "num_classes"):
        out["num_classes"] = model.num_classes
    return out
