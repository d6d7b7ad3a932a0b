"""bettervit: MaxViT, Hiera and EVA-02, exact, readable, fast and trainable."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from .registry import get_entry, list_models, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "__version__"]


def create_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    img_size: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights.

    pretrained: False; True for the variant's default released weights (huggingface_hub cache, offline once cached);
    a hub id; or a local .safetensors/.pth/.pt/.bin file in timm's or the official format. A checkpoint with a
    different class count (or none) leaves the classifier freshly initialised; one made at another image size is
    resized (bias tables, position embeddings) by the model's ``convert_checkpoint``.
    """
    from . import weights

    entry = get_entry(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if img_size is not None:
        overrides["img_size"] = img_size
    model = entry.model_cls(entry.config(**overrides))
    if pretrained is not False and pretrained is not None:
        if pretrained is True:
            if not entry.weights:
                raise ValueError(f"{name} has no default released weights; pass a checkpoint path or hub id")
            pretrained = entry.weights
        path = weights.resolve(pretrained)
        weights.load_into(model, weights.load_state_dict(path), source=str(path))
    return model
