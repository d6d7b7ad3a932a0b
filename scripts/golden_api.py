"""Golden fixtures for the family-independent parts of timm's API: ``adapt_input_conv`` (stems for in_chans != 3),
``resample_abs_pos_embed``, ``feature_take_indices``, and the pretrained weight list. Reference environment only:

    .ref/bin/python scripts/golden_api.py
"""
from __future__ import annotations

import json

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models._features import feature_take_indices
from timm.models._manipulate import adapt_input_conv

from golden_common import GOLDEN, save_fixture


def main() -> None:
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    kernel = torch.randn(8, 3, 3, 3, generator=g)
    out["conv"] = kernel
    for c in (1, 2, 4, 5, 7):
        out[f"conv_in{c}"] = adapt_input_conv(c, kernel.clone())
    pos = torch.randn(1, 1 + 6 * 6, 16, generator=g)
    out["pos"] = pos
    cases = {"a": ((4, 8), 1, True), "b": ((9, 5), 1, False), "c": ((10, 12), 0, False), "d": ((3, 3), 1, True)}
    for key, (size, prefix, aa) in cases.items():
        src = pos if prefix else pos[:, 1:]
        out[f"pos_{key}"] = resample_abs_pos_embed(src, list(size), num_prefix_tokens=prefix, antialias=aa)
    takes = {}
    for n, idx in [(5, None), (5, 2), (5, [0, 2, 4]), (12, [-1]), (12, 3), (4, [1, -1])]:
        t, m = feature_take_indices(n, idx)
        takes[json.dumps([n, idx])] = [list(t), m]
    archs = ("maxvit_*_tf_*", "hiera_*_224", "eva02_*_patch14_224", "eva02_*_patch14_336", "eva02_*_patch14_448",
             "sam2_hiera_*", "eva_giant_*")
    # EVA-02's CLIP towers (eva02_*_clip_*) are not in bettervit; EVA's giant ones (eva_giant_*clip*) are
    pretrained = sorted({n for a in archs for n in timm.list_pretrained(a)
                         if not n.startswith("eva02") or "clip" not in n})
    save_fixture(GOLDEN / "api" / "shared.safetensors", out, {}, cases=cases, takes=takes, pretrained=pretrained,
                 timm_version=timm.__version__)


if __name__ == "__main__":
    main()
