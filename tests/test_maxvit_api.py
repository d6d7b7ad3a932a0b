"""MaxViT's timm model API against timm 1.0.31 (fixtures from scripts/golden_maxvit.py `api`): forward_intermediates
for several indices, pruning, reset_classifier, feature_info, and the same API's shapes on another variant."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import bettervit
from bettervit import weights
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

API = GOLDEN / "maxvit" / "api"
TOL = 1e-4


def sample(f: torch.Tensor) -> torch.Tensor:  # as scripts/golden_maxvit.py stores maps
    s = max(1, min(f.shape[-2:]) // 14)
    return f[:, :8, ::s, ::s]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL


@pytest.fixture(scope="module")
def tiny():
    ref, shapes, meta = read_fixture(API / "maxvit_tiny_tf_224.safetensors")
    with torch.device("meta"):
        model = bettervit.create_model("maxvit_tiny_tf_224")
    model.to_empty(device="cpu").eval()
    weights.load_into(model, reference_checkpoint(shapes), source="timm fixture")
    return model, ref, meta["api"], golden_input((1, 3, 224, 224)), shapes


CALLS = ["all", "all_norm", "last2", "pick", "pick_norm", "neg", "stop"]


@pytest.mark.parametrize("tag", CALLS)
def test_forward_intermediates_values(tiny, tag):
    model, ref, api, x, _ = tiny
    kw = api[tag]["kwargs"]
    with torch.inference_mode():
        final, maps = model.forward_intermediates(x, **kw)
        only = model.forward_intermediates(x, intermediates_only=True, **kw)
    assert [list(f.shape) for f in maps] == api[tag]["shapes"]
    assert list(final.shape) == api[tag]["final_shape"]
    close(sample(final), ref[f"{tag}.final"])
    for i, f in enumerate(maps):
        close(sample(f), ref[f"{tag}.{i}"])
        torch.testing.assert_close(only[i], f, rtol=0, atol=0)


def test_attributes_and_feature_info(tiny):
    model, _, api, _, _ = tiny
    assert model.feature_info == api["feature_info"]
    assert (model.num_features, model.head_hidden_size) == (api["num_features"], api["head_hidden_size"])
    assert model.num_classes == 1000 and model.global_pool == "avg"
    assert model.get_classifier() is model.head.fc
    assert type(model).default_out_indices == (0, 1, 2, 3, 4)


def test_prune_to_stages_0_and_1(tiny):
    model, ref, api, x, _ = tiny
    model = copy.deepcopy(model)
    assert model.prune_intermediate_layers([1, 2]) == api["prune_take"]
    exp = api["pruned"]
    assert (model.num_features, model.head_hidden_size, model.num_classes) == (
        exp["num_features"], exp["head_hidden_size"], exp["num_classes"])
    with torch.inference_mode():
        y = model(x)
        maps = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    assert list(y.shape) == exp["out_shape"]
    close(sample(y), ref["pruned.out"])
    close(sample(maps[1]), ref["pick.1"])  # level 2 is unchanged by pruning
    assert len(model.stages) == 2


def test_prune_keeping_all_levels_and_head(tiny):
    model, ref, api, x, _ = tiny
    model = copy.deepcopy(model)
    assert model.prune_intermediate_layers((0, 1, 2, 3, 4), prune_head=False) == api["prune_keep_take"]
    with torch.inference_mode():
        close(model(x), ref["prune_keep.logits"])


def test_prune_last_level_head_becomes_pass_through(tiny):
    model, ref, _, x, _ = tiny
    model = copy.deepcopy(model)
    model.prune_intermediate_layers([-1], prune_norm=True)
    with torch.inference_mode():
        close(sample(model(x)), ref["prune_last.out"])


def test_reset_classifier_without_pooling(tiny):
    model, ref, api, x, _ = tiny
    model = copy.deepcopy(model)
    model.reset_classifier(0, "")
    with torch.inference_mode():
        y = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert list(y.shape) == api["reset0_nopool"]["out_shape"]
    assert list(pre.shape) == api["reset0_nopool"]["pre_logits_shape"]
    assert model.head_hidden_size == api["reset0_nopool"]["head_hidden_size"]
    close(y[:, :8], ref["reset0_nopool.out"])
    assert model.num_classes == 0 and model.global_pool == "" and isinstance(model.get_classifier(), torch.nn.Identity)


def test_reset_classifier_to_pre_logits(tiny):
    model, ref, _, x, _ = tiny
    model = copy.deepcopy(model)
    model.reset_classifier(0)
    with torch.inference_mode():
        close(model(x), ref["reset0_avg.out"])
    model.reset_classifier(5, "avgmax")
    assert model(x).shape == (1, 5) and model.get_classifier().out_features == 5


def test_created_without_pooling_loads_timms_conv_head(tiny):
    """timm builds a 1x1-conv head when created with global_pool=''; its checkpoint loads into our linears."""
    _, ref, api, x, shapes = tiny
    with torch.device("meta"):
        model = bettervit.create_model("maxvit_tiny_tf_224", global_pool="", num_classes=10)
    model.to_empty(device="cpu").eval()
    head = {k: tuple(v) for k, v in api["nopool10"]["shapes"].items()}
    weights.load_into(model, reference_checkpoint({**shapes, **head}), source="timm fixture")
    with torch.inference_mode():
        y = model(x)
    assert list(y.shape) == api["nopool10"]["out_shape"]
    close(y, ref["nopool10.out"])


def test_other_variant_shapes():
    info = json.loads((API / "maxvit_small_tf_384_shapes.json").read_text())
    with torch.device("meta"):
        model = bettervit.create_model("maxvit_small_tf_384")
        x = torch.empty(1, 3, 384, 384)
        assert model.feature_info == info["feature_info"]
        assert (model.num_features, model.head_hidden_size) == (info["num_features"], info["head_hidden_size"])
        for tag in CALLS:
            final, maps = model.forward_intermediates(x, **info[tag]["kwargs"])
            assert [list(f.shape) for f in maps] == info[tag]["shapes"], tag
            assert list(final.shape) == info[tag]["final_shape"], tag
        model.prune_intermediate_layers([1, 2])
        assert list(model(x).shape) == info["pruned"]["out_shape"]
        assert (model.num_features, model.head_hidden_size) == (
            info["pruned"]["num_features"], info["pruned"]["head_hidden_size"])


def test_group_matcher_and_bad_options():
    model = bettervit.create_model("maxvit_nano")
    gm = model.group_matcher()
    assert gm["stem"] == r"^stem" and gm["blocks"][0] == (r"^stages\.(\d+)", None)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[5])
    with pytest.raises(ValueError, match="1..5"):
        model.forward_intermediates(x, indices=6)
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        bettervit.create_model("maxvit_nano", global_pool="token")


def test_drop_rate_and_features_train():
    """Head dropout from ``drop_rate``; a pruned model trains (every kept parameter gets a gradient)."""
    model = bettervit.create_model("maxvit_nano", drop_rate=0.5).train()
    assert model.head.drop.p == 0.5
    model.prune_intermediate_layers([0, 2])
    maps = model.forward_intermediates(torch.randn(2, 3, 64, 64), indices=[0, 2], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 32, 32), (2, 64, 8, 8)]
    sum(m.square().mean() for m in maps).backward()
    assert all(p.grad is not None for p in model.parameters())
