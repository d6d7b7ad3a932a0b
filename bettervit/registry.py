"""The model registry: every named variant is a one-line config builder under ``@register_model``.

A variant records the model class it builds, its config (a dataclass), the hub id of its default released weights
and its family. The registry is plain data and imports no model; ``bettervit.factory`` (``create_model``,
``list_models`` ...) imports the model package, which fills it.
"""
from __future__ import annotations

import dataclasses
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
    #: facts for ``pretrained_cfg`` of a variant timm has no config for (e.g. the official download URL, input
    #: size, normalisation); merged over the family's defaults by ``bettervit.factory.get_pretrained_cfg``
    pretrained_cfg: dict[str, Any] | None = None

    def config(self, **overrides: Any) -> Any:
        cfg = self.config_fn()
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; expected some of: {', '.join(sorted(fields))}"
            )
        return dataclasses.replace(cfg, **overrides)


REGISTRY: dict[str, ModelEntry] = {}


def register_model(model_cls: type[nn.Module], *, weights: str | None = None, family: str | None = None,
                   pretrained_cfg: dict[str, Any] | None = None):
    """Decorator for a variant: ``@register_model(MaxViT, weights="timm/...")`` over ``def name() -> Config``.
    ``pretrained_cfg``: see :attr:`ModelEntry.pretrained_cfg`."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        name = fn.__name__
        if name in REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        fam = family or model_cls.__module__.rsplit(".", 1)[-1]
        REGISTRY[name] = ModelEntry(name, model_cls, fn, weights, fam, pretrained_cfg)
        return fn

    return wrap


def register_variant(model_cls: type[nn.Module], name: str, make_config: Callable[[], Any], doc: str, *,
                     weights: str | None = None, family: str | None = None,
                     pretrained_cfg: dict[str, Any] | None = None) -> None:
    """Register one row of a family's table of variants: ``name`` (written out in the table, so a search for it
    finds where it is defined) builds ``make_config()``. The other arguments as :func:`register_model`'s."""

    def variant() -> Any:
        return make_config()

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = doc
    register_model(model_cls, weights=weights, family=family, pretrained_cfg=pretrained_cfg)(variant)
