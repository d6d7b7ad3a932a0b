"""What every bettervit classifier shares: timm's model API (the parts that don't depend on the architecture) and
the checkpoint hooks.

A model subclasses ``Backbone`` and implements ``forward_features``, ``forward_head``, ``forward_intermediates``,
``prune_intermediate_layers``, ``get_classifier`` / ``reset_classifier``, ``group_matcher``, ``no_weight_decay``,
``layer_id`` / ``num_layer_ids`` and ``convert_checkpoint``; it sets ``num_classes``, ``num_features``,
``head_hidden_size`` and ``feature_info`` (a list of ``dict(num_chs, reduction, module)``, one per feature level,
as timm's models do). The config dataclass is ``model.config``; ``create_model`` attaches ``pretrained_cfg``.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def img_size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """A config's ``img_size`` (a side, or (H, W)) as (H, W): the one spelling every family uses."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Absolute feature-level indices to take, and the largest of them (timm's index meaning).

    ``None`` takes all ``num_features`` levels, an int ``n`` the last ``n``, a sequence the listed levels (negative
    values count from the end).
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n feature count must be in 1..{num_features}, got {indices}")
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ValueError(f"feature index {i} is out of range for {num_features} levels (0..{num_features - 1})")
            take.append(idx)
        if not take:
            raise ValueError("expected at least one feature index")
    return take, max(take)


class Backbone(nn.Module):
    config: Any
    #: parameter-name prefixes of the classifier, dropped when a checkpoint's class count differs
    classifier_prefixes: tuple[str, ...] = ("head.fc.",)
    #: ``out_indices`` of ``create_model(..., features_only=True)`` when none are given (timm's per-family default)
    default_out_indices: int | tuple[int, ...] = 4
    #: whether ``torch.export`` can trace the input's H x W symbolically (one exported graph for every size); False
    #: where the token layout depends on the size in ways its symbolic shapes cannot simplify (bettervit.export
    #: then exports a static H x W, a dynamic batch still)
    export_dynamic_hw: bool = True
    #: timm's pretrained config (input size, normalisation, crop, classifier name ...), set by ``create_model``
    pretrained_cfg: dict[str, Any] = {}

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes) (pooled features if num_classes == 0)."""
        return self.forward_head(self.forward_features(x))

    def check_input(
        self, x: Tensor, multiple: int | tuple[int, int], fixed: tuple[int, int] | None = None
    ) -> None:
        """Raise a one-line ValueError for an input the model cannot take (wrong rank, channels, side multiple, or
        a size other than ``fixed`` for a model that only runs at one size)."""
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        in_chans = self.config.in_chans
        if x.shape[1] != in_chans:
            raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
        mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
        h, w = x.shape[-2:]
        if fixed is not None and (h, w) != tuple(fixed):
            raise ValueError(f"{type(self).__name__} was built for {fixed[0]}x{fixed[1]} inputs, got {h}x{w}")
        if h % mh or w % mw or h == 0 or w == 0:
            what = f"multiples of {mh}" if mh == mw else f"multiples of {mh} (height) and {mw} (width)"
            raise ValueError(f"{type(self).__name__}: input height and width must be {what}, got {h}x{w}")

    # --- training helpers ---------------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def run_block(self, block: nn.Module, *args: Any) -> Any:
        """``block(*args)``, through activation checkpointing when it is on and autograd records (the one place
        every family's block loop goes through)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def param_layer_ids(self) -> dict[str, int]:
        """Layer id of every parameter (0 = stem ... num_layer_ids() - 1 = head), for layer-wise LR decay."""
        return {n: self.layer_id(n) for n, _ in self.named_parameters()}

    #: for models that are one flat ``blocks`` list: parameter-name prefixes of the embeddings (layer id 0)
    embed_prefixes: tuple[str, ...] = ()

    def layer_id(self, name: str) -> int:
        """Layer id of a parameter of a flat ``blocks`` model: 0 for the embeddings (``embed_prefixes``), 1 + i for
        block i, the last id for everything after the blocks (norms, head). Staged models override this."""
        if name.startswith(self.embed_prefixes):
            return 0
        m = re.match(r"blocks\.(\d+)\.", name)
        return 1 + int(m[1]) if m else self.num_layer_ids() - 1

    def num_layer_ids(self) -> int:
        return len(self.blocks) + 2  # embeddings, every block, what follows them

    # --- checkpoints --------------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a checkpoint in any supported upstream format to this model's keys and sizes."""
        return state_dict
