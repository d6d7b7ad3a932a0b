"""EVA-02 at run-time sizes: any multiple of 14 per side, square or not, from a model built at 224, equals timm's EVA
with dynamic_img_size=True (fixture: scripts/golden_eva02.py sizes); dynamic_img_pad=True pads other sizes as timm;
the patch-kernel resample equals timm's resample_patch_embed."""
from __future__ import annotations

import pytest
import torch

import bettervit
from bettervit import weights
from bettervit.models.eva import resample_patch_embed
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

TOL = 1e-4
REF, SHAPES, META = read_fixture(GOLDEN / "eva02" / "sizes_eva02_tiny_patch14_224.safetensors")


def _model(**kw):
    m = bettervit.create_model("eva02_tiny_patch14_224", **kw).eval()
    weights.load_into(m, reference_checkpoint(SHAPES), source="timm fill")
    return m


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.mark.parametrize("h, w", [(112, 168), (196, 126)])
def test_non_square_sizes_match_timm_dynamic_img_size(model, h, w):
    x = golden_input((1, 3, h, w))
    with torch.inference_mode():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        maps = model.forward_intermediates(x, indices=[0, 11], intermediates_only=True)
    assert feats.shape == (1, 1 + (h // 14) * (w // 14), 192)
    assert (feats[:, :: META["token_step"]] - REF[f"tokens_{h}x{w}"]).abs().max().item() <= TOL
    assert (pooled - REF[f"pooled_{h}x{w}"]).abs().max().item() <= TOL
    for i, f in zip([0, 11], maps):
        assert f.shape == (1, 192, h // 14, w // 14)
        assert (f[:, :8] - REF[f"block{i}_{h}x{w}"]).abs().max().item() <= TOL


@pytest.mark.parametrize("h, w", [(100, 130), (112, 141)])
def test_dynamic_img_pad_matches_timm(h, w):
    m = _model(dynamic_img_pad=True)
    x = golden_input((1, 3, h, w))
    with torch.inference_mode():
        pooled = m.forward_head(m.forward_features(x), pre_logits=True)
        (f,) = m.forward_intermediates(x, indices=[-1], intermediates_only=True)
    assert f.shape == (1, 192, -(-h // 14), -(-w // 14))
    assert (pooled - REF[f"pad_pooled_{h}x{w}"]).abs().max().item() <= TOL
    assert (f[:, :8] - REF[f"pad_block11_{h}x{w}"]).abs().max().item() <= TOL


def test_other_sizes_without_padding_name_the_multiple(model):
    with pytest.raises(ValueError, match="multiples of 14"):
        model(torch.randn(1, 3, 100, 112))


def test_one_model_serves_many_sizes_without_recreation():
    m = bettervit.create_model("eva02_tiny_patch14_224", depth=2, num_classes=4).eval()
    with torch.no_grad():
        for h, w in [(224, 224), (28, 420), (420, 28), (70, 56)]:
            assert m(torch.randn(2, 3, h, w)).shape == (2, 4)
            maps = m.forward_intermediates(torch.randn(1, 3, h, w), intermediates_only=True)
            assert all(f.shape == (1, 192, h // 14, w // 14) for f in maps)


def test_created_non_square_size_has_its_own_grid():
    m = bettervit.create_model("eva02_tiny_patch14_224", depth=1, img_size=(112, 168)).eval()
    assert m.grid == (8, 12) and m.pos_embed.shape == (1, 1 + 96, 192)
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 112, 168)).shape == (1, 97, 192)


@pytest.mark.parametrize("size", [(16, 16), (12, 10)])
def test_patch_embed_resample_matches_timm(size):
    """FlexiViT's pseudo-inverse resize of a 14x14 kernel, equal to timm's resample_patch_embed."""
    kernel = golden_input((4, 3, 14, 14))
    got = resample_patch_embed(kernel, size)
    ref = REF[f"patch_kernel_{size[0]}" if size == (16, 16) else "patch_kernel_12x10"]
    assert got.shape == (4, 3, *size)
    assert (got - ref).abs().max().item() <= TOL


def test_resampled_kernel_keeps_tokens_of_resized_patches():
    """What the pseudo-inverse buys: a 16-px patch of the image bicubic-upsampled by 16/14 gives (nearly) the token
    the 14-px kernel gave; the plain bicubic-resized kernel does not."""
    torch.manual_seed(0)
    w = torch.randn(8, 3, 14, 14)
    x = torch.nn.functional.interpolate(torch.randn(2, 3, 4, 4), size=(14, 14), mode="bilinear")  # smooth patches
    up = torch.nn.functional.interpolate(x, size=(16, 16), mode="bicubic", antialias=True)
    tok = torch.einsum("bchw,ochw->bo", x, w)
    flexi = torch.einsum("bchw,ochw->bo", up, resample_patch_embed(w, (16, 16)))
    naive = torch.einsum("bchw,ochw->bo", up, torch.nn.functional.interpolate(w, size=(16, 16), mode="bicubic"))
    assert (flexi - tok).abs().max() < 1e-3 * tok.abs().max()
    assert (naive - tok).abs().max() > 0.1 * tok.abs().max()
