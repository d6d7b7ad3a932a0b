"""Run checkpoints: written atomically, read without unpickling code, always the unwrapped module's keys.

A checkpoint is a dict saved with ``torch.save``:
- ``model``: the weights the logged validation numbers belong to (the EMA weights when EMA is on), with the plain
  module's key names (never ``module.`` or ``_orig_mod.``), so ``create_model(name, pretrained=path)`` and
  ``train --init path`` read it directly. Pretraining stores the MAE model, or the MIM model (``encoder.``,
  ``mask_token``, ``lm_head.``; never the teacher); the classifier's ``convert_checkpoint`` picks the encoder out;
- ``meta``: model name, class names, preprocessing, epoch, metrics and the merged config (plain Python types);
- ``resume`` (last checkpoint only): raw weights, optimizer, scheduler, EMA, grad scaler and RNG states.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

_WRAPPER_ATTRS = ("_orig_mod", "module")  # torch.compile, DDP


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile / DDP wrappers (FSDP2 shards in place and needs no unwrapping)."""
    while any(hasattr(model, a) and isinstance(getattr(model, a), nn.Module) for a in _WRAPPER_ATTRS):
        model = next(getattr(model, a) for a in _WRAPPER_ATTRS if isinstance(getattr(model, a, None), nn.Module))
    return model


def clean_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A module's state dict as a checkpoint stores it: wrapper prefixes removed (``bettervit.weights.unwrap``),
    FSDP2 DTensors gathered to whole tensors, everything detached on the CPU."""
    from ..weights import unwrap

    out = {}
    for k, v in unwrap(sd, "state dict").items():
        if hasattr(v, "full_tensor"):  # FSDP2 DTensor -> the whole tensor
            v = v.full_tensor()
        out[k] = v.detach().cpu().clone()
    return out


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True``; a one-line ValueError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read checkpoint {path}: {first}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _np_state_to_plain(np.random.get_state()),
        "python": _py_state_to_plain(random.getstate()),
    }


# weights_only loading accepts plain containers and tensors: convert numpy / python RNG states to those.
def _np_state_to_plain(st: tuple) -> list:
    return [st[0], torch.from_numpy(np.asarray(st[1]).astype(np.int64)), int(st[2]), int(st[3]), float(st[4])]


def _py_state_to_plain(st: tuple) -> list:
    return [st[0], list(st[1]), st[2]]


def _restore_np(plain: list) -> tuple:
    return (plain[0], plain[1].numpy().astype(np.uint32), plain[2], plain[3], plain[4])


def set_rng_state(state: dict) -> None:
    """Restore the states written by ``rng_state`` (numpy's array came back as an int64 tensor)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(_restore_np(state["numpy"]))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
