"""Parts used by two or more models."""
from .drop import DropPath, drop_path
from .mlp import Mlp

__all__ = ["DropPath", "drop_path", "Mlp"]
