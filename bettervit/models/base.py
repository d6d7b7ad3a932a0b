"""What every bettervit classifier shares: the public methods of GUIDE §2 and the checkpoint hooks.

A model subclasses ``Backbone`` and implements ``forward_features``, ``forward_head``, ``forward_intermediates``,
``reset_classifier``, ``no_weight_decay``, ``layer_id``/``num_layer_ids`` and ``convert_checkpoint``. The config
dataclass is ``model.config``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Backbone(nn.Module):
    config: Any
    #: parameter-name prefixes of the classifier, dropped when a checkpoint's class count differs
    classifier_prefixes: tuple[str, ...] = ("head.fc.",)

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def check_input(self, x: Tensor, multiple: int, fixed: tuple[int, int] | None = None) -> None:
        """Raise a one-line ValueError for an input the model cannot take."""
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        in_chans = self.config.in_chans
        if x.shape[1] != in_chans:
            raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
        h, w = x.shape[-2:]
        if fixed is not None and (h, w) != tuple(fixed):
            raise ValueError(
                f"{type(self).__name__} was built for {fixed[0]}x{fixed[1]} inputs, got {h}x{w}; "
                f"create it with img_size={h} (a multiple of {multiple}) instead"
            )
        if h % multiple or w % multiple:
            raise ValueError(f"input height and width must be multiples of {multiple}, got {h}x{w}")

    # --- training helpers ---------------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def param_layer_ids(self) -> dict[str, int]:
        """Layer id of every parameter (0 = stem ... num_layer_ids() - 1 = head), for layer-wise LR decay."""
        return {n: self.layer_id(n) for n, _ in self.named_parameters()}

    def layer_id(self, name: str) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_layer_ids(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- checkpoints --------------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a checkpoint in any supported upstream format to this model's keys and sizes."""
        return state_dict

    @torch.no_grad()
    def classifier_state_matches(self, state_dict: dict[str, Tensor]) -> bool:
        own = self.state_dict()
        return all(
            k in own and own[k].shape == v.shape
            for k, v in state_dict.items()
            if k.startswith(self.classifier_prefixes)
        )
