"""Finding, reading and fitting checkpoints.

``pretrained`` may be ``True`` (the variant's default hub id), a hub id (``"timm/maxvit_tiny_tf_224.in1k"`` or
``"hf-hub:..."``) or a local file (.safetensors, .pth, .pt, .bin). Hub files come through huggingface_hub's cache:
once cached, loading needs no network. Pickled files are read with ``weights_only=True``, so a checkpoint can never
run code. Format conversion (timm / official key maps, resizing) belongs to each model's ``convert_checkpoint``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
# Checkpoint wrappers seen in the wild: official Hiera ("model_state"), MAE/EVA ("model", "module"), Lightning etc.
_WRAPPER_KEYS = ("model_state", "state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")


def resolve(pretrained: str | os.PathLike, cache_dir: str | None = None) -> Path:
    """A local checkpoint path for a local file or a hub id (downloading into the hub cache if needed)."""
    s = str(pretrained)
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            for fn in HUB_FILENAMES:
                if (p / fn).exists():
                    return p / fn
            raise ValueError(f"checkpoint directory {p} holds none of {', '.join(HUB_FILENAMES)}")
        if not s.endswith(WEIGHT_SUFFIXES):
            raise ValueError(f"checkpoint {p}: expected a file ending in {', '.join(WEIGHT_SUFFIXES)}")
        return p
    if s.endswith(WEIGHT_SUFFIXES) or s.startswith((".", "/", "~")):
        raise ValueError(f"checkpoint file not found: {s}")
    repo_id = s.removeprefix("hf-hub:")
    if repo_id.count("/") != 1:
        raise ValueError(f"pretrained={s!r}: expected True, a local checkpoint file or a hub id 'org/name'")
    return _hub_file(repo_id, cache_dir)


def _hub_file(repo_id: str, cache_dir: str | None) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    for fn in HUB_FILENAMES:  # cached first: no network once a file is in the cache
        hit = try_to_load_from_cache(repo_id, fn, cache_dir=cache_dir)
        if isinstance(hit, str):
            return Path(hit)
    errors = []
    for fn in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo_id, fn, cache_dir=cache_dir))
        except Exception as e:  # noqa: BLE001 - report every attempt in one line
            errors.append(f"{fn}: {type(e).__name__}")
    raise ValueError(f"could not fetch weights for hub id {repo_id!r} (not cached, download failed: {'; '.join(errors)})")


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat {name: tensor} dict, unwrapping common wrappers. Never unpickles code."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read checkpoint {path}: {msg}") from e
    return unwrap(sd, str(path))


def unwrap(sd: object, where: str = "checkpoint") -> dict[str, Tensor]:
    while isinstance(sd, dict) and not any(isinstance(v, Tensor) for v in sd.values()):
        inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{where}: no tensors found (top-level keys: {', '.join(map(str, list(sd)[:8]))})")
        sd = inner
    if not isinstance(sd, dict):
        raise ValueError(f"{where}: expected a dict of tensors, got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            continue
        while k.startswith(_PREFIXES):  # stacked wrappers, e.g. torch.compile over DDP: "_orig_mod.module."
            k = next(k.removeprefix(pre) for pre in _PREFIXES if k.startswith(pre))
        out[k] = v
    return out


def adapt_input_conv(in_chans: int, weight: Tensor) -> Tensor:
    """A first-conv kernel (O, 3, k, k) made for RGB (or (O, 3, kt, k, k), a video stem), adapted to ``in_chans``
    inputs as timm does: one channel gets the sum over RGB (a grey image then gives the response the RGB weights gave
    to it); other counts repeat the RGB kernels cyclically and scale by 3 / in_chans, so a constant input keeps its
    response."""
    if weight.ndim not in (4, 5):
        raise ValueError(f"expected a 4-D or 5-D conv kernel to adapt to {in_chans} input channels, got "
                         f"{tuple(weight.shape)}")
    base = weight.shape[1]
    if in_chans == base:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-in_chans // base)  # ceil
        w = w.repeat(1, reps, *([1] * (w.ndim - 2)))[:, :in_chans] * (base / in_chans)
    return w.to(weight.dtype)


def load_into(
    model: nn.Module, state_dict: dict[str, Tensor], *, source: str = "checkpoint", first_conv: str | None = None
) -> None:
    """Convert ``state_dict`` to the model's format and load it strictly.

    ``first_conv`` (a module name, e.g. ``"stem.conv1"``): if the checkpoint's kernel there was made for another
    number of input channels than the model's, it is adapted with :func:`adapt_input_conv`.

    If the checkpoint's classifier does not fit (other class count, or a headless checkpoint), the classifier keeps
    its fresh initialisation and everything else must match. Missing / unexpected keys raise one ValueError naming
    them.
    """
    sd = model.convert_checkpoint(dict(state_dict))
    own = model.state_dict()
    key = f"{first_conv}.weight" if first_conv else None
    if key in sd and key in own and sd[key].ndim in (4, 5) and sd[key].shape[1] != own[key].shape[1]:
        log.info("%s: adapting %s from %d to %d input channels", source, key, sd[key].shape[1], own[key].shape[1])
        sd[key] = adapt_input_conv(own[key].shape[1], sd[key])
    prefixes = getattr(model, "classifier_prefixes", ())
    head_fits = all(k in own and own[k].shape == v.shape for k, v in sd.items() if k.startswith(prefixes))
    head_present = any(k.startswith(prefixes) for k in sd)
    if not head_fits or not head_present:
        sd = {k: v for k, v in sd.items() if not k.startswith(prefixes)}
        if prefixes and head_present:
            log.info("%s: classifier shape differs from the model's; keeping a fresh classifier", source)
    expected = {k for k in own if not (k.startswith(prefixes) and k not in sd)}
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = sorted(k for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_short(unexpected)}")
        if bad_shape:
            parts.append(
                "shape mismatch: "
                + _short([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape])
            )
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)


def _short(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")
