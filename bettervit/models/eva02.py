"""The EVA / EVA-02 models live in :mod:`bettervit.models.eva` (as in timm); this module keeps the older import
path working: ``Eva02`` / ``Eva02Config`` are ``Eva`` / ``EvaConfig``."""
from .eva import *  # noqa: F401,F403
from .eva import (  # noqa: F401  (names not in eva's __all__ that older code imports)
    Block, Eva, EvaConfig, GeluMlp, Rope, _PackedSwiGLU, convert_checkpoint, resample_patch_embed, rope_angles,
    rope_tables, rotate, window_partition, window_unpartition,
)

Eva02, Eva02Config = Eva, EvaConfig
