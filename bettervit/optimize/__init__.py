"""STAND-IN (eva02 branch) for the lead's bettervit/optimize/__init__.py: same contract, replaced on merge.

``optimize(model)``: a copy of the model in eval mode, without gradients, transformed by the pass registered for its
class (``@register_pass(ModelClass)``).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

_PASSES: dict[type, Callable[[nn.Module], nn.Module]] = {}


def register_pass(model_cls: type) -> Callable:
    def wrap(fn: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        _PASSES[model_cls] = fn
        return fn

    return wrap


def optimize(model: nn.Module) -> nn.Module:
    from . import eva02  # noqa: F401  (registers the pass)

    model = copy.deepcopy(model).eval().requires_grad_(False)
    fn = _PASSES.get(type(model))
    return fn(model) if fn is not None else model
