"""timm 1.0.31's own model tests (tests/test_models.py: forward, backward, default cfgs, features_only,
forward_intermediates), translated to bettervit for the smallest released variant of each family. TorchScript and
FX tracing are left out (bettervit targets torch.compile / torch.export instead). timm classes Hiera and EVA-02 as
"non-standard" (their forward_features is not an NCHW map), MaxViT as standard; the checks follow that split.
"""
from __future__ import annotations

import math

import pytest
import torch

import bettervit
from bettervit.features import FeatureInfo

MODELS = ["maxvit_tiny_tf_224", "hiera_tiny_224", "eva02_tiny_patch14_224"]
NON_STD = ("hiera_", "eva02_")
TARGET_BWD, TARGET_FFEAT = 128, 96


def _input_size(model, target=None):
    cfg = model.default_cfg
    size = tuple(cfg["input_size"])
    if cfg.get("fixed_input_size") or target is None:
        return size
    return tuple(min(s, target) for s in size) if max(size) > target else size


@pytest.mark.parametrize("name", MODELS)
def test_model_forward(name):
    model = bettervit.create_model(name).eval()
    x = torch.randn(1, *_input_size(model, 384))
    with torch.no_grad():
        out = model(x)
        assert out.shape[0] == 1 and not out.isnan().any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_model_backward(name):
    model = bettervit.create_model(name, num_classes=42).train()
    x = torch.randn(2, *_input_size(model, TARGET_BWD))
    out = model(x)
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]
    assert out.shape[-1] == 42 and not out.isnan().any()


@pytest.mark.parametrize("name", MODELS)
def test_model_default_cfgs(name):
    model = bettervit.create_model(name).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    cfg, sd = model.default_cfg, model.state_dict()
    x = torch.randn(1, *_input_size(model))
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape[1] == model.head_hidden_size
        if name.startswith(NON_STD):
            assert feats.shape[-1 if feats.ndim == 3 else 1] == model.num_features
        else:
            assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"]) and feats.shape[1] == model.num_features
        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape and out.shape[1] == model.head_hidden_size
        if not name.startswith(NON_STD):
            model.reset_classifier(0, "")
            out = model(x)
            assert out.ndim == 4 and tuple(out.shape[-2:]) == tuple(cfg["pool_size"])
            out = bettervit.create_model(name, num_classes=0, global_pool="").eval()(x)
            assert out.ndim == 4 and tuple(out.shape[-2:]) == tuple(cfg["pool_size"])
        else:
            out = bettervit.create_model(name, num_classes=0).eval()(x)
            assert out.shape[-1] == model.num_features
    if cfg.get("num_classes"):
        assert cfg["classifier"] + ".weight" in sd
    assert cfg["first_conv"] + ".weight" in sd


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_features(name):
    model = bettervit.create_model(name, features_only=True).eval()
    chans, reds = model.feature_info.channels(), model.feature_info.reduction()
    assert len(chans) >= 3
    size = _input_size(model, TARGET_FFEAT)
    with torch.no_grad():
        outs = model(torch.randn(1, *size))
    assert len(outs) == len(chans)
    for c, r, o in zip(chans, reds, outs):
        assert o.shape[1] == c and o.shape[0] == 1 and not o.isnan().any()
        assert o.shape[2] <= math.ceil(size[1] / r) + 1 and o.shape[3] <= math.ceil(size[2] / r) + 1


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_intermediates(name):
    model = bettervit.create_model(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    chans, reds = info.channels(), info.reduction()
    assert len(chans) >= 3
    size = _input_size(model, TARGET_FFEAT)
    x = torch.randn(1, *size)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(inter) == len(chans)
        for c, r, o in zip(chans, reds, inter):
            assert o.shape[1] == c and o.shape[0] == 1 and not o.isnan().any()
            assert o.shape[2] <= math.ceil(size[1] / r) + 1 and o.shape[3] <= math.ceil(size[2] / r) + 1
        torch.testing.assert_close(final, model.forward_features(x))
        model.set_grad_checkpointing()
        final2, _ = model.forward_intermediates(x, output_fmt="NCHW")
        torch.testing.assert_close(final2, final, rtol=1e-4, atol=1e-5)
