"""AdamW with per-parameter groups, and learning-rate schedules with linear warmup (cosine, linear, step, constant).

Groups come from two questions per parameter:
- weight decay? Not on the names the model lists in ``no_weight_decay()`` (position embeddings, bias tables, tokens)
  nor on any 1-d parameter (biases, norm scales and shifts).
- learning rate? With layer-wise decay ``d`` < 1, a parameter of layer id ``i`` (0 = stem ... L-1 = head, from
  ``model.param_layer_ids()`` / ``model.num_layer_ids()``) trains at ``lr * d ** (L - 1 - i)``: the head at full
  rate, the stem slowest. Models without layer ids get one rate.

Frozen parameters (``requires_grad=False``) get no group, and the others keep the scale of their own layer id: freezing
the first blocks does not shift the decay of the rest. Every schedule here is a ``LambdaLR``: one factor per step,
multiplied into each group's own initial rate, so the ratio between groups (the layer decay) holds at every step,
whatever the schedule -- unlike schedules that write one absolute rate into every group.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    use_layers = layer_decay != 1.0 and hasattr(model, "param_layer_ids") and hasattr(model, "num_layer_ids")
    layer_ids = model.param_layer_ids() if use_layers else {}
    num_layers = model.num_layer_ids() if use_layers else 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip or any(name.startswith(s + ".") or name.endswith("." + s) for s in skip)
        lid = layer_ids.get(name, num_layers - 1) if use_layers else 0
        scale = layer_decay ** (num_layers - 1 - lid) if use_layers else 1.0
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scale, "layer_id": lid}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


SCHEDULES = ("cosine", "linear", "step", "constant")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_lr_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """``name`` in SCHEDULES, after a linear warmup: cosine to ``min_lr_ratio``; linear to ``min_lr_ratio``; step
    (x0.1 at 1/3 and 2/3 of the steps after warmup); constant."""
    if name == "cosine":
        return cosine_with_warmup(optimizer, total_steps, warmup_steps, min_lr_ratio)
    if name not in SCHEDULES:
        raise ValueError(f"--sched must be one of {', '.join(SCHEDULES)}, got {name!r}")
    total_steps = max(1, total_steps)
    warmup_steps = min(warmup_steps, total_steps - 1) if total_steps > 1 else 0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if name == "linear":
            return 1.0 - (1.0 - min_lr_ratio) * t
        if name == "step":
            return 0.1 ** int(3 * t if t < 1 else 2)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                       min_lr_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Per optimizer step: linear from ~0 to the base rate over ``warmup_steps``, then cosine to ``min_lr_ratio``."""
    total_steps = max(1, total_steps)
    warmup_steps = min(warmup_steps, total_steps - 1) if total_steps > 1 else 0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
