"""MaxViT at run-time sizes: a model built once takes any H x W multiple of 32 with its trained partition.

Where the partition tiles every stage's map, the result equals timm's MaxViT created at that size with the same
partition (fixtures from scripts/golden_maxvit.py `sizes`); elsewhere the maps are padded and the padded keys
masked, and the real region must not depend on what the padding holds."""
from __future__ import annotations

import pytest
import torch

import bettervit
from bettervit import weights
from bettervit.models import maxvit
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

SIZES = GOLDEN / "maxvit" / "sizes"


def sample(f: torch.Tensor) -> torch.Tensor:  # as scripts/golden_maxvit.py stores maps
    s = max(1, min(f.shape[-2:]) // 14)
    return f[:, :8, ::s, ::s]


def _model(path, name: str, **kw):
    ref, shapes, meta = read_fixture(path)
    with torch.device("meta"):
        model = bettervit.create_model(name, img_size=tuple(meta["img_size"]), **kw)
    model.to_empty(device="cpu").eval()
    weights.load_into(model, reference_checkpoint(shapes), source="timm fixture")
    return model, ref, meta


@pytest.mark.parametrize("fixture,name", [("maxvit_nano", "maxvit_nano"), ("maxvit_nano_96x64", "maxvit_nano"),
                                          ("maxvit_tiny_tf_224", "maxvit_tiny_tf_224")])
def test_run_time_sizes_equal_timm_created_at_that_size(fixture, name):
    model, ref, meta = _model(SIZES / f"{fixture}.safetensors", name)
    for h, w in meta["sizes"]:
        x = golden_input((1, 3, h, w))
        with torch.inference_mode():
            final, maps = model.forward_intermediates(x)
            logits = model.forward_head(final)
        assert (logits - ref[f"{h}x{w}.logits"]).abs().max().item() <= 1e-4, (h, w)
        for i, f in enumerate(maps):
            assert f.shape[-2:] == (h // 2 ** (i + 1), w // 2 ** (i + 1))
            assert (sample(f) - ref[f"{h}x{w}.{i}"]).abs().max().item() <= 1e-4, (h, w, i)


def test_non_square_creation_has_rectangular_partition():
    model = bettervit.create_model("maxvit_nano", img_size=(96, 64))
    assert model.config.partition == (3, 2)
    assert model.stages[0].blocks[0].attn_grid.attn.rel_pos.relative_position_bias_table.shape[-2:] == (5, 3)


@pytest.mark.parametrize("size", [(96, 96), (160, 96), (64, 96)])
def test_padding_content_does_not_reach_real_tokens(monkeypatch, size):
    """At sizes the 2x2 partition does not tile (a 3-pixel or 5-pixel stage map), fill the padding with noise."""
    model = bettervit.create_model("maxvit_nano").eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
        calls = []

        def noisy_pad(t, pad_h, pad_w):
            calls.append((pad_h, pad_w))
            out = torch.randn(t.shape[0], t.shape[1] + pad_h, t.shape[2] + pad_w, t.shape[3]) * 100
            out[:, : t.shape[1], : t.shape[2]] = t
            return out

        monkeypatch.setattr(maxvit, "pad_map", noisy_pad)
        noisy = model.forward_intermediates(x, intermediates_only=True)
        noisy_logits = model(x)
    assert calls, "this size must need padding"
    for a, b in zip(ref, noisy):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, noisy_logits, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logits).all()


def test_padded_size_trains():
    model = bettervit.create_model("maxvit_nano").train()
    model(torch.randn(2, 3, 96, 160)).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_sizes_not_multiple_of_32_are_refused():
    model = bettervit.create_model("maxvit_nano")
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match="multiple of 32"):
        bettervit.create_model("maxvit_nano", img_size=(64, 80))
