"""Deterministic tensors from names: the rule shared by the golden-fixture script and the tests.

Golden fixtures must not ship weight files, yet must exercise every parameter of full-size models. So both sides
(the reference environment that runs timm / hiera-transformer, and our tests) fill each tensor from its *name* in
the reference checkpoint with the same rule. Only integer arithmetic feeds the hash, so the values are bit-identical
across torch versions and builds.

Rule, for a tensor named ``name`` with ``n`` elements (u in [0, 1) from a 32-bit integer hash of (crc32(name), i)):
  - ``*running_var``                     -> 0.5 + u                      (positive variances)
  - ``*running_mean``                    -> 0.2 * (u - 0.5)
  - ``*num_batches_tracked``             -> 0
  - weights with >= 2 dims               -> uniform(-a, a), a = sqrt(3 / fan_in), fan_in = n / shape[0]
  - 1-d ``*weight`` (norm scales)        -> 1 + 0.2 * (u - 0.5)
  - everything else (biases, tokens, position embeddings, bias tables) -> 0.2 * (u - 0.5)
The model input is ``golden_input(shape)`` = 2 * (2u - 1) under the name "input".

This file imports nothing but torch, numpy and zlib, so the reference environment can use it without bettervit.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch

_MASK = 0xFFFFFFFF
_MUL = 0x45D9F3B  # a well-mixing odd constant < 2**31, so products stay inside int64


def uniform01(name: str, n: int) -> np.ndarray:
    """n float64 values in [0, 1), a pure function of ``name`` and the index.

    h = mix(mix(mix(i + crc32(name)))), mix(h) = ((h >> 16) ^ h) * 0x45D9F3B mod 2**32, then (h >> 16) ^ h; u = h / 2**32.
    Computed in cache-sized chunks of uint32, whose multiplication wraps mod 2**32 by definition.
    """
    seed = zlib.crc32(name.encode())
    out = np.empty(n, dtype=np.float64)
    chunk = 1 << 16
    t = np.empty(min(n, chunk), dtype=np.uint32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        h = (np.arange(start, start + m, dtype=np.uint64) + seed).astype(np.uint32)  # (i + seed) mod 2**32
        tt = t[:m]
        for _ in range(3):
            np.right_shift(h, 16, out=tt)
            h ^= tt
            h *= np.uint32(_MUL)
        np.right_shift(h, 16, out=tt)
        h ^= tt
        out[start : start + m] = h
    return out / 2.0**32


def fill_value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 tensor the rule assigns to ``name`` with ``shape``."""
    n = math.prod(shape)
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    u = uniform01(name, n).reshape(shape)
    if name.endswith("running_var"):
        v = 0.5 + u
    elif name.endswith("running_mean"):
        v = 0.2 * (u - 0.5)
    elif len(shape) >= 2 and name.endswith("weight"):
        a = math.sqrt(3.0 / (n // shape[0]))
        v = a * (2 * u - 1)
    elif len(shape) == 1 and name.endswith("weight"):
        v = 1 + 0.2 * (u - 0.5)
    else:
        v = 0.2 * (u - 0.5)
    return torch.from_numpy(v.astype(np.float32))


def fill_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A whole checkpoint from key names and shapes."""
    return {k: fill_value(k, tuple(s)) for k, s in shapes.items()}


def golden_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy((2 * (2 * uniform01("input", math.prod(shape)) - 1)).reshape(shape).astype(np.float32))
