"""bettervit: MaxViT, Hiera and EVA-02, exact, readable, fast and trainable.

The model API is timm's: ``create_model``, ``list_models``, ``list_pretrained``, ``is_model``, ``get_pretrained_cfg``,
``get_pretrained_cfg_value``, ``set_scriptable``; ``register_timm`` makes every model reachable through
``timm.create_model`` under a prefix; ``optimize`` turns a model into a CPU inference model (fused kernels, packed
weights).
"""
from __future__ import annotations

from typing import Any

# Bound eagerly: ``bettervit.optimize`` is this function, not the subpackage of the same name.
from .optimize import optimize

__version__ = "0.1.0"
__all__ = [
    "create_model", "list_models", "list_pretrained", "is_model", "get_pretrained_cfg", "get_pretrained_cfg_value",
    "set_scriptable", "is_scriptable", "register_model", "register_timm", "optimize", "__version__",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import bettervit` stays light (the CLI answers `--help` without building models).
    if name in ("create_model", "list_models", "list_pretrained", "is_model", "get_pretrained_cfg",
                "get_pretrained_cfg_value", "set_scriptable", "is_scriptable"):
        from . import factory

        return getattr(factory, name)
    if name == "register_model":
        from .registry import register_model

        return register_model
    if name == "register_timm":  # needs timm (the `timm` extra); imported only when asked for
        from .integrations.timm import register_timm

        return register_timm
    raise AttributeError(f"module 'bettervit' has no attribute {name!r}")
