"""``bettervit.optimize(model)``: the CPU inference pass.

The model files hold the papers' math, one forward per block, and run everywhere (training, CUDA, torch.compile,
torch.export / ONNX). Speed tricks that only pay on one backend live here, as a rewrite of a model into an
inference model, in the spirit of timm's ``reparameterize_model`` and torchtitan's functions of (model, config):
- linears run as oneDNN matmuls on weights packed once, *in place of* the plain weights (no second copy);
- the activation, residual add or gating product after a matmul is fused into it; BatchNorm is folded into the
  convolution before it;
- per family, what else pays on a CPU (see ``bettervit/optimize/<family>.py``).

The result is for inference only (eval mode, no gradients, fp32 on the CPU); its outputs equal the plain model's
to float rounding, and its ``state_dict`` keeps the plain model's keys for the linear layers (MaxViT's
convolutions with BatchNorm folded in appear as fused convolutions; see ``optimize/maxvit.py``).
"""
from __future__ import annotations

import copy
import ctypes
import importlib
import logging
from typing import Callable

import torch
from torch import nn

from . import onednn

log = logging.getLogger(__name__)

Pass = Callable[[nn.Module], nn.Module]
_PASSES: dict[type, Pass] = {}
_FAMILIES = ("maxvit", "hiera", "eva02")


def register_pass(model_cls: type) -> Callable[[Pass], Pass]:
    """Decorator: ``@register_pass(MaxViT) def optimize_maxvit(model) -> model`` (rewrites ``model`` in place)."""

    def wrap(fn: Pass) -> Pass:
        _PASSES[model_cls] = fn
        return fn

    return wrap


def _load_passes() -> None:
    for family in _FAMILIES:
        try:
            importlib.import_module(f"{__name__}.{family}")
        except ModuleNotFoundError as e:  # a family without a pass yet
            if e.name != f"{__name__}.{family}":
                raise


def _find_pass(model: nn.Module) -> Pass | None:
    _load_passes()
    for cls in type(model).__mro__:
        if cls in _PASSES:
            return _PASSES[cls]
    return None


def _return_freed_heap() -> None:
    """Give the heap pages that the replaced plain weights occupied back to the OS (glibc only; else nothing).

    The pass frees the plain weights one module at a time while it allocates their packed forms, so the freed
    pieces lie between live ones; glibc keeps such pages resident, and the forward's large buffers (fresh mmaps)
    cannot reuse them. ``malloc_trim`` releases the free pages inside the heap, not only at its top."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def optimize(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A CPU fp32 inference version of ``model``: a bettervit classifier, a ``features_only`` wrapper of one, or a
    ``bettervit.detection`` detector (its backbone's trunk is optimized; pyramid and heads stay as they are).

    ``inplace=False`` (default) leaves ``model`` untouched and works on a copy; ``inplace=True`` rewrites it and
    avoids holding two copies of the weights. Models without a pass, or a torch build without oneDNN, come back in
    eval mode with gradients off, otherwise unchanged.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval().requires_grad_(False)
    if next(model.parameters(), torch.empty(0)).device.type != "cpu":
        raise ValueError("bettervit.optimize rewrites models for CPU inference; move the model to the CPU first")
    owner, attr = _trunk_slot(model)
    target = getattr(owner, attr) if owner is not None else model
    fn = _find_pass(target)
    if fn is None or not onednn.available():
        log.info("no CPU pass for %s (oneDNN available: %s); returning it in eval mode", type(target).__name__,
                 onednn.available())
        return model
    with torch.no_grad():
        out = fn(target)
    _return_freed_heap()
    if owner is None:
        return out
    setattr(owner, attr, out)
    return model


def _trunk_slot(model: nn.Module) -> tuple[nn.Module | None, str]:
    """(module, attribute) holding the bettervit trunk inside a wrapper, or (None, "") for a bare model.

    A ``features_only`` wrapper keeps it in ``.model``; a detector's backbone names its trunk's path in
    ``trunk_prefix`` (e.g. ``body.model.`` for an FPN on a features_only model, ``body.backbone.`` for ViTDet)."""
    prefix = getattr(getattr(model, "backbone", None), "trunk_prefix", None)
    if isinstance(prefix, str) and prefix:
        path = ("backbone." + prefix).rstrip(".").split(".")
        return model.get_submodule(".".join(path[:-1])), path[-1]
    if isinstance(getattr(model, "model", None), nn.Module):
        return model, "model"
    return None, ""
