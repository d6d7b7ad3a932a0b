"""Shared test helpers (imported as a plain module: pyproject's pytest ``pythonpath`` puts tests/ on the path).

- ``small_overrides(name)``: ``create_model`` overrides that shrink a registered variant to a few blocks of small
  width and a small input, read from its config dataclass whatever the field names are (``depths`` / ``stages`` /
  ``depth``, ``num_heads`` / ``heads``, ``img_size`` / ``img_hw`` / ``input_size``), so the registry-wide contract
  tests keep each variant's architecture choices (norms, MLP kind, RoPE, windows, pooling) at test cost.
- ``build_small(name)`` / ``small_input(model)``: a cached small build and an input batch that fits it.
- ``make_folder(root)``: a tiny ImageFolder tree for the data / training / CLI tests.
- ``slow_cases(values, slow)``: parametrize values with the slow ones marked ``slow`` (``make test-fast`` skips them).
"""
from __future__ import annotations

import copy
import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import bettervit
from bettervit.factory import get_entry

# Config field names, old and new spellings (the first that the dataclass has is used)
DEPTH_FIELDS = ("depths", "stages", "depth")
HEADS_FIELDS = ("num_heads", "heads")
SIZE_FIELDS = ("img_size", "img_hw", "input_size")
WIDTH_FIELDS = ("embed_dims", "embed_dim")

HEAD_DIM = 16  # channels per head of the small builds (EVA-02's RoPE needs a multiple of 4)
SMALL_SIDE = 64  # input side of the small builds for stride-32 models (2 x 2 tokens after the last stage)


def _field(cfg: Any, names: tuple[str, ...]) -> str | None:
    fields = {f.name for f in dataclasses.fields(cfg)}
    return next((n for n in names if n in fields), None)


def _small_depths(depths: tuple[int, ...] | int) -> tuple[int, ...] | int:
    """One block per stage (the stage count and so the strides stay); three for a flat model (timm's default
    ``out_indices`` of a ViT are its last three blocks)."""
    return tuple(1 for _ in depths) if isinstance(depths, (tuple, list)) else min(int(depths), 3)


def _remap_blocks(blocks: tuple[int, ...], old: tuple[int, ...] | int, new: tuple[int, ...] | int) -> tuple[int, ...]:
    """Block indices (e.g. global-attention blocks) moved to the same stage of the shrunk model."""
    if isinstance(old, int):
        return tuple(sorted({min(b, new - 1) for b in blocks}))
    out = set()
    for b in blocks:
        stage = next(i for i in range(len(old)) if b < sum(old[: i + 1]))
        offset = b - sum(old[:stage])
        out.add(sum(new[:stage]) + min(offset, new[stage] - 1))
    return tuple(sorted(out))


def _small_side(cfg: Any) -> int | tuple[int, int]:
    patch = getattr(cfg, "patch_size", None)
    if patch is not None:  # plain ViT (EVA): a 4 x 3 patch grid, not square
        return (4 * patch, 3 * patch)
    return SMALL_SIDE


def small_overrides(name: str) -> dict[str, Any]:
    """``create_model`` overrides giving ``name`` at test size, derived from its config dataclass.

    Width: the first stage's width becomes ``HEAD_DIM`` per head with at most 2 heads (MaxViT: the per-stage widths
    scaled together to start at 2 heads of ``HEAD_DIM``); depth: one block per stage (flat models: 3),
    with block-indexed options (global-attention blocks) moved along; decoders (MAE): 1 block of width 32; video:
    4 temporal tokens; input: 64 px (multiples of 32), or a 4 x 3 patch grid for patch models. Other fields stay.
    """
    return shrink_config(get_entry(name).config())


def shrink_config(cfg: Any) -> dict[str, Any]:
    """The overrides of :func:`small_overrides` for a config dataclass instance."""
    out: dict[str, Any] = {}
    depth_f = _field(cfg, DEPTH_FIELDS)
    if depth_f:
        old = getattr(cfg, depth_f)
        out[depth_f] = new = _small_depths(old)
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if "blocks" in f.name and isinstance(value, tuple) and value:
                out[f.name] = _remap_blocks(value, old, new)
    heads_f = _field(cfg, HEADS_FIELDS)
    heads = min(int(getattr(cfg, heads_f)), 2) if heads_f else 1
    if heads_f:
        out[heads_f] = heads
    width_f = _field(cfg, WIDTH_FIELDS)
    if width_f and isinstance(getattr(cfg, width_f), (tuple, list)):  # per-stage widths (MaxViT)
        dims = getattr(cfg, width_f)
        scale = 2 * HEAD_DIM / dims[0]
        out[width_f] = tuple(max(HEAD_DIM, int(round(d * scale / HEAD_DIM)) * HEAD_DIM) for d in dims)
        if hasattr(cfg, "head_dim"):
            out["head_dim"] = HEAD_DIM
    elif width_f:
        out[width_f] = HEAD_DIM * heads
    if getattr(cfg, "stem_width", None):
        out["stem_width"] = min(cfg.stem_width, 2 * HEAD_DIM)
    for names, value in ((("decoder_dim", "decoder_embed_dim"), 2 * HEAD_DIM),
                         (("decoder_depth", "decoder_depths"), 1), (("decoder_heads", "decoder_num_heads"), 2)):
        field = _field(cfg, names)
        if field:
            out[field] = value
    if getattr(cfg, "num_frames", 0):
        out["num_frames"] = min(cfg.num_frames, 4 * getattr(cfg, "patch_stride_t", 2))  # 16 mask units at 64 px
    size_f = _field(cfg, SIZE_FIELDS)
    if size_f:
        out[size_f] = _small_side(cfg)
    return out


def slow_cases(values: list[Any], slow: set[str], key=str) -> list[Any]:
    """``values`` for ``parametrize`` with those whose ``key(value)`` is in ``slow`` marked ``slow``; a name in
    ``slow`` that matches no value raises (so a renamed case cannot silently move to the fast lane)."""
    unknown = set(slow) - {key(v) for v in values}
    if unknown:
        raise ValueError(f"slow_cases: no case named {sorted(unknown)}")
    return [pytest.param(v, marks=pytest.mark.slow) if key(v) in slow else v for v in values]


def is_mae(name: str) -> bool:
    """A masked-autoencoder model (forward returns a loss, no classifier)."""
    return hasattr(get_entry(name).model_cls, "forward_loss")


def is_video(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "num_frames", 0))


def uses_patch_size(model: nn.Module) -> bool:
    """A plain ViT (EVA): one token per patch, feature maps at the patch stride."""
    return getattr(getattr(model, "config", None), "patch_size", None) is not None


@lru_cache(maxsize=8)  # the tests parametrise by name with scope="module", so one name's builds are used together
def _cached(name: str, extra: tuple[tuple[str, Any], ...]) -> nn.Module:
    torch.manual_seed(0)
    return bettervit.create_model(name, **small_overrides(name), **dict(extra)).eval()


def build_small(name: str, fresh: bool = False, **extra: Any) -> nn.Module:
    """The small build of ``name`` (``small_overrides`` + ``extra``), in eval mode, seeded.

    The last few builds are cached per (name, extra): parametrise by name with ``scope="module"`` so that pytest runs
    one name's tests together and they share one build. The cached model is shared, so a test that changes the model
    (classifier, pruning, checkpointing, training) must pass ``fresh=True`` to get its own deep copy."""
    model = _cached(name, tuple(sorted(extra.items())))
    return copy.deepcopy(model) if fresh else model


def small_input(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random batch of the model's build size: (B, C, H, W), or (B, C, T, H, W) for video models."""
    shape = model.pretrained_cfg["input_size"]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g)


def make_folder(root: Path, n_per_class: int = 4, size: int = 20, classes: tuple[str, ...] = ("cat", "dog"),
                junk: bool = True) -> Path:
    """An ImageFolder tree ``root/{train,val}/<class>/<i>.png`` of random size x (size + 4) images; with ``junk``
    a text file and a broken PNG in the first train class (loaders must skip them)."""
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                arr = rng.randint(0, 255, (size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    if junk:
        (root / "train" / classes[0] / "notes.txt").write_text("not an image")
        (root / "train" / classes[0] / "broken.png").write_bytes(b"\x89PNG garbage")
    return root


def assert_same_last_weights(run_a, run_b) -> None:
    """The ``model`` weights in two run directories' ``last.pt`` are bit-identical (resume == uninterrupted)."""
    a = torch.load(Path(run_a) / "last.pt", weights_only=True)["model"]
    b = torch.load(Path(run_b) / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def backward_with_saved_count(model: torch.nn.Module, forward) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Run ``forward()`` (-> (output, scalar loss)) and backward: the detached output, the gradients of the
    parameters that got one, and how many tensors autograd saved outside checkpointed regions (gradient
    checkpointing must save fewer)."""
    model.zero_grad(set_to_none=True)
    saved = []

    def pack(t):
        saved.append(1)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, loss = forward()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, len(saved)
