"""Importing this package registers every model family (each file ends with its table of variants)."""
from . import maxvit  # noqa: F401
from . import hiera  # noqa: F401
from . import hieradet  # noqa: F401
from . import eva  # noqa: F401  (EVA and EVA-02)
from . import mae_hiera  # noqa: F401  (the MAE pretraining models, mae_hiera_*)
