"""Mixed precision: the autocast context ``--amp`` asks for (the loop's training step and the tasks' evaluation)."""
from __future__ import annotations

import contextlib

import torch


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``amp`` "none": no autocast; "bf16" / "fp16": ``torch.autocast`` on ``device`` with that dtype."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
