"""The model registry: every named variant is a one-line config builder under ``@register_model``.

A variant records three things: the model class it builds, its config (a dataclass), and the hub id of its default
released weights. ``create_model`` (in ``bettervit/__init__.py``) is the only consumer.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_cls: type[nn.Module]
    config_fn: Callable[[], Any]  # returns a fresh config dataclass
    weights: str | None  # default hub id for pretrained=True, e.g. "timm/maxvit_tiny_tf_224.in1k"
    family: str

    def config(self, **overrides: Any) -> Any:
        cfg = self.config_fn()
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; expected some of: {', '.join(sorted(fields))}"
            )
        return dataclasses.replace(cfg, **overrides)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(model_cls: type[nn.Module], *, weights: str | None = None, family: str | None = None):
    """Decorator for a variant: ``@register_model(MaxViT, weights="timm/...")`` over ``def name() -> Config``."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        fam = family or model_cls.__module__.rsplit(".", 1)[-1]
        _REGISTRY[name] = ModelEntry(name, model_cls, fn, weights, fam)
        return fn

    return wrap


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (importing the package registers every variant)
    from .pretrain import mae  # noqa: F401  (registers the mae_hiera_* variants)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else "; see `bettervit models`"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))
