"""bettervit where timm is expected: timm's last API gaps (no timm needed), the timm registry hook, and the
libraries that take a timm backbone by name — Hugging Face transformers (RT-DETR, RT-DETRv2, D-FINE, Mask2Former
through ``TimmBackboneConfig``), segmentation_models_pytorch (Unet, FPN, UPerNet with ``tu-`` encoders) and effdet.

Each consumer test builds the smallest variants at 64 px, runs one training step with labels (the loss must be finite
and reach every backbone parameter that takes part) and an eval forward. The consumers are the ``integrations`` extra;
without them those tests are skipped.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bettervit
from bettervit.features import FeatureGetter

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "bv_"


# --- timm's last gaps (bettervit alone) ------------------------------------------------------------------------
@pytest.mark.parametrize("name,size", [("maxvit_tiny_tf_224", (256, 192)), ("maxvit_nano", 64), ("maxvit_nano", 96)])
def test_pool_size_follows_img_size(name, size):
    """pretrained_cfg's pool_size is the grid forward_features gives at the built size (timm's default-cfg check)."""
    model = bettervit.create_model(name, img_size=size).eval()
    h, w = (size, size) if isinstance(size, int) else size
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == [3, h, w]
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, h, w))
    assert list(feats.shape[-2:]) == list(cfg["pool_size"]) == [h // 32, w // 32]
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert list(model(torch.randn(1, 3, h, w)).shape[-2:]) == list(cfg["pool_size"])


GETTER_CASES = [("maxvit_nano", 64), ("hiera_nano", 64), ("eva02_nano", 56), ("sam2_hiera_tiny", 64)]


@pytest.mark.parametrize("name,px", GETTER_CASES)
def test_feature_cls_getter(name, px):
    """features_only=True, feature_cls='getter' as timm's FeatureGetterNet: the default levels, equal to the model's
    forward_intermediates; 'dict' keys them by level index; an unknown kind is one ValueError."""
    kwargs = dict(embed_dim=32, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,)) if "sam2" in name else {}
    torch.manual_seed(0)
    getter = bettervit.create_model(name, features_only=True, feature_cls="getter", **kwargs).eval()
    x = torch.randn(1, 3, px, px)
    plain = bettervit.create_model(name, **kwargs).eval()
    plain.load_state_dict(getter.model.state_dict(), strict=False)
    with torch.no_grad():
        maps = getter(x)
        want = plain.forward_intermediates(x, indices=list(getter.out_indices), intermediates_only=True)
    assert len(maps) == len(getter.feature_info.channels()) >= 3
    for m, c, r, w in zip(maps, getter.feature_info.channels(), getter.feature_info.reduction(), want):
        assert m.shape[1] == c and m.shape[-1] == -(-px // r)
        torch.testing.assert_close(m, w)
    as_dict = bettervit.create_model(name, features_only=True, feature_cls="dict", out_indices=(-2, -1), **kwargs)
    with torch.no_grad():
        out = as_dict.eval()(x)
    n = len(as_dict.model.feature_info)
    assert list(out) == [str(n - 2), str(n - 1)]
    with pytest.raises(ValueError, match="feature_cls"):
        bettervit.create_model(name, features_only=True, feature_cls="fx", **kwargs)


def test_return_layers_as_timm_wrappers():
    """return_layers maps module names to level indices; setting it to every level returns every level the pruned
    model keeps (what transformers' TimmBackbone does for output_hidden_states=True), then it can be set back."""
    model = bettervit.create_model("maxvit_nano", features_only=True, out_indices=(1, 2, 3)).eval()
    assert model.return_layers == {"stages.0": "1", "stages.1": "2", "stages.2": "3"}
    own = model.return_layers
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
        model.return_layers = {fi["module"]: str(i) for i, fi in enumerate(model.feature_info.info)}
        every = model(x)  # levels 0..3 (stage 4 was pruned)
        model.return_layers = own
        again = model(x)
    assert [e.shape[1] for e in every] == [32, 32, 64, 128]
    for i, o in zip(model.feature_info.out_indices, outs):
        torch.testing.assert_close(every[i], o)
    assert len(again) == 3
    model.return_layers = {"stages_0": "1"}  # timm's flattened name
    assert model.return_layers == {"stages.0": "1"}
    with pytest.raises(ValueError, match="return_layers"):
        model.return_layers = {"nope": "0"}


def test_feature_getter_loads_a_whole_model_checkpoint():
    """A checkpoint of the unwrapped classifier loads into a pruned wrapper (pruned parts' weights ignored)."""
    full = bettervit.create_model("hiera_nano").eval()
    getter = bettervit.create_model("hiera_nano", features_only=True, out_indices=(0, 1))
    getter.load_state_dict(full.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = full.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        for a, b in zip(getter.eval()(x), want):
            torch.testing.assert_close(a, b)
    bad = {k: v for k, v in full.state_dict().items() if not k.startswith("blocks.0.")}
    with pytest.raises(RuntimeError, match="blocks.0"):
        getter.load_state_dict(bad)


def test_get_pretrained_cfg_value_and_set_scriptable():
    assert bettervit.get_pretrained_cfg_value("hiera_tiny_224", "input_size") == [3, 224, 224]
    assert bettervit.get_pretrained_cfg_value("maxvit_tiny_tf_224.in1k", "pool_size") == [7, 7]
    assert bettervit.get_pretrained_cfg_value("hiera_tiny_224", "no_such_field") is None
    with pytest.raises(ValueError, match="unknown model"):
        bettervit.get_pretrained_cfg_value("hiera_tinyy", "input_size")
    assert not bettervit.is_scriptable()
    with bettervit.set_scriptable(True):
        assert bettervit.is_scriptable()
        model = bettervit.create_model("hiera_nano", scriptable=True)  # timm's switch: accepted, nothing changes
    assert not bettervit.is_scriptable()
    assert isinstance(model, torch.nn.Module)
