from . import mim  # noqa: F401  (registers the demo EVA-02 variant used for MIM)
