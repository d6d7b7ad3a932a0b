"""Bridges to other libraries. Each needs its library (an optional extra) and is imported only when asked for:
``bettervit.integrations.timm`` registers bettervit's models in timm's registry (the ``timm`` extra)."""
