"""The family-independent parts of timm's model API: create_model's options, pretrained configs, the model list,
stem adaptation for other channel counts, position-embedding resampling, and features_only. Values are checked
against fixtures timm produced (scripts/golden_api.py)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import bettervit
from bettervit.factory import get_pretrained_cfg
from bettervit.layers.pos_embed import resample_abs_pos_embed
from bettervit.models.base import feature_take_indices
from bettervit.weights import adapt_input_conv
from golden_util import GOLDEN, read_fixture

FIX, _, META = read_fixture(GOLDEN / "api" / "shared.safetensors")
# the smallest variant of each family, at a small input
SMALL = {"maxvit_nano": 64, "hiera_nano": 64, "eva02_tiny_patch14_224": 56}


def test_feature_take_indices_matches_timm():
    for key, (take, last) in META["takes"].items():
        n, idx = json.loads(key)
        assert feature_take_indices(n, idx) == (take, last), key
    with pytest.raises(ValueError, match="out of range"):
        feature_take_indices(4, [4])
    with pytest.raises(ValueError, match="1..4"):
        feature_take_indices(4, 5)


@pytest.mark.parametrize("chans", [1, 2, 4, 5, 7])
def test_adapt_input_conv_matches_timm(chans):
    torch.testing.assert_close(adapt_input_conv(chans, FIX["conv"]), FIX[f"conv_in{chans}"], rtol=0, atol=1e-6)


def test_resample_abs_pos_embed_matches_timm():
    for key, (size, prefix, aa) in META["cases"].items():
        src = FIX["pos"] if prefix else FIX["pos"][:, 1:]
        got = resample_abs_pos_embed(src, size, num_prefix_tokens=prefix, antialias=aa)
        torch.testing.assert_close(got, FIX[f"pos_{key}"], rtol=0, atol=1e-5, msg=key)


def test_model_lists():
    assert bettervit.list_pretrained() == META["pretrained"]
    assert bettervit.list_models("hiera_tiny*", pretrained=True) == ["hiera_tiny_224.mae", "hiera_tiny_224.mae_in1k_ft_in1k"]
    assert "maxvit_nano" in bettervit.list_models("maxvit*") and "maxvit_nano" not in bettervit.list_models(
        "maxvit*", pretrained=True)
    assert bettervit.list_models("eva02_*_patch14_*", module="eva02", exclude_filters="*_224") == [
        f"eva02_{s}" for s in ("base_patch14_448", "large_patch14_448", "small_patch14_336", "tiny_patch14_336")]
    assert bettervit.is_model("maxvit_tiny_tf_224.in1k") and not bettervit.is_model("vit_base_patch16_224")


def test_pretrained_cfg_attached():
    m = bettervit.create_model("maxvit_tiny_tf_384")
    cfg = m.pretrained_cfg
    assert m.default_cfg is cfg
    assert cfg["input_size"] == [3, 384, 384] and cfg["first_conv"] == "stem.conv1" and cfg["classifier"] == "head.fc"
    assert cfg["crop_pct"] == get_pretrained_cfg("maxvit_tiny_tf_384")["crop_pct"] == 1.0
    assert cfg["hf_hub_id"] == "timm/maxvit_tiny_tf_384.in1k"
    with pytest.raises(ValueError, match="no weight tag"):
        bettervit.create_model("hiera_tiny_224.in1k")


def test_create_model_option_errors():
    with pytest.raises(ValueError, match="unknown option"):
        bettervit.create_model("hiera_nano", not_an_option=3)
    with pytest.raises(ValueError, match="output_stride"):
        bettervit.create_model("hiera_nano", output_stride=16)
    with pytest.raises(ValueError, match="features_only"):
        bettervit.create_model("hiera_nano", out_indices=(1, 2))
    with pytest.raises(ValueError, match="unknown model"):
        bettervit.create_model("hiera_tinny_224")
    assert bettervit.create_model("hiera_nano", False, num_classes=None).num_classes == 1000  # positional, as timm


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("chans", [1, 4])
def test_in_chans_adapts_pretrained_stem(tmp_path, name, chans):
    torch.manual_seed(0)
    ref = bettervit.create_model(name, img_size=SMALL[name])
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    m = bettervit.create_model(name, pretrained=str(path), in_chans=chans, img_size=SMALL[name])
    key = m.pretrained_cfg["first_conv"] + ".weight"
    torch.testing.assert_close(m.state_dict()[key], adapt_input_conv(chans, ref.state_dict()[key]))
    if chans == 1:  # a grey image through the summed kernel = the same image as RGB through the original
        x = torch.rand(2, 1, SMALL[name], SMALL[name])
        torch.testing.assert_close(m.eval()(x), ref.eval()(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(SMALL))
def test_checkpoint_path(tmp_path, name):
    torch.manual_seed(1)
    ref = bettervit.create_model(name, img_size=SMALL[name]).eval()
    path = tmp_path / "ck.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    m = bettervit.create_model(name, checkpoint_path=str(path), img_size=SMALL[name]).eval()
    x = torch.randn(1, 3, SMALL[name], SMALL[name])
    torch.testing.assert_close(m(x), ref(x))


@pytest.mark.parametrize("name", list(SMALL))
def test_features_only(name):
    size = SMALL[name]
    m = bettervit.create_model(name, features_only=True, img_size=size)
    info = m.feature_info
    x = torch.randn(2, 3, size, size)
    maps = m(x)
    assert len(maps) == len(info.out_indices) == len(info.channels()) == len(info.reduction())
    for f, c, r in zip(maps, info.channels(), info.reduction()):
        assert f.shape == (2, c, size // r, size // r)
    assert all(isinstance(n, str) for n in info.module_name())
    assert "classifier" not in m.pretrained_cfg and "num_classes" not in m.pretrained_cfg
    # a training step through the wrapper reaches every parameter the kept levels depend on
    sum(f.float().pow(2).mean() for f in maps).backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    # out_indices picks levels; negative indices count from the end
    m2 = bettervit.create_model(name, features_only=True, out_indices=(0, -1), img_size=size)
    maps2 = m2(x)
    assert len(maps2) == 2 and maps2[1].shape[1] == m2.feature_info.channels()[-1]
