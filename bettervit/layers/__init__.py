"""Parts used by two or more models."""
from .classifier import POOL_TYPES, NormClassifierHead, check_pool_type, global_pool
from .drop import DropPath, drop_path
from .mlp import Mlp
from .pos_embed import ResampledPosEmbedCache, resample_abs_pos_embed

__all__ = [
    "DropPath", "drop_path", "Mlp", "POOL_TYPES", "NormClassifierHead", "check_pool_type", "global_pool",
    "ResampledPosEmbedCache", "resample_abs_pos_embed",
]
