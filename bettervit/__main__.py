"""``python -m bettervit ...`` (also what ``torchrun -m bettervit`` runs)."""
import sys

from .cli import main

sys.exit(main())
