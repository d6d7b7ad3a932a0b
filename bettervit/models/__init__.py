"""Importing this package registers every model family."""
from . import maxvit  # noqa: F401
from . import hiera  # noqa: F401
from . import eva02  # noqa: F401
from . import hieradet  # noqa: F401
