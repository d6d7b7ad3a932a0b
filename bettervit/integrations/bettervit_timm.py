"""The module timm's registry lists bettervit's entry points under (``timm.list_models(module="bettervit_timm")``).

``bettervit.integrations.timm.register_timm`` fills it: timm's ``register_model`` reads an entry point's module for
its ``default_cfgs`` (the pretrained configs) and appends the entry point's name to its ``__all__``; keeping that in
a module of its own leaves every other module's namespace as it is.
"""
from __future__ import annotations

from typing import Any

default_cfgs: dict[str, Any] = {}
__all__: list[str] = []
