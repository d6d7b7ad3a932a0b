"""Hiera's timm model API and run-time input sizes, against timm 1.0.31 (fixtures: scripts/golden_hiera.py):
forward_intermediates (indices, formats, stop_early, mask), prune_intermediate_layers, reset_classifier,
feature_info, and any multiple-of-32 H x W on a model built at 224."""
from __future__ import annotations

import copy

import pytest
import torch

import bettervit
from bettervit import weights
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

API = GOLDEN / "hiera" / "timm_api_hiera_tiny_224.safetensors"
SIZES = GOLDEN / "hiera" / "timm_sizes_hiera_tiny_224.safetensors"
TOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() <= TOL


@pytest.fixture(scope="module")
def api():
    ref, shapes, meta = read_fixture(API)
    model = bettervit.create_model("hiera_tiny_224", img_size=meta["img_size"])
    weights.load_into(model, reference_checkpoint(shapes), source="fixture")
    return ref, model.eval(), meta


def _fresh(api):
    return copy.deepcopy(api[1])  # tests below prune / reset it


CASES = {  # fixture name: forward_intermediates kwargs (as given to timm)
    "all_nchw": dict(), "all_nhwc_late": dict(output_fmt="NHWC", stop_early=False),
    "last2_nhwc": dict(indices=2, output_fmt="NHWC"), "pick02_nchw": dict(indices=[0, 2]),
    "pick02_nhwc": dict(indices=[0, 2], output_fmt="NHWC"), "neg1_nchw": dict(indices=[-1]),
    "blocks_1_5": dict(indices=[1, 5], coarse=False), "last1_blocks": dict(indices=1, coarse=False, stop_early=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_intermediates_equals_timm(api, case):
    ref, _, meta = api
    model = _fresh(api)
    kw = CASES[case]
    x = golden_input(tuple(meta["input"]))
    with torch.inference_mode():
        final, maps = model.forward_intermediates(x, **kw)
        only = model.forward_intermediates(x, intermediates_only=True, **kw)
    assert [list(m.shape) for m in maps] == meta[case]
    nhwc = kw.get("output_fmt") == "NHWC"
    for i, (m, o) in enumerate(zip(maps, only)):
        _close(m[..., :8] if nhwc else m[:, :8], ref[f"fi.{case}.{i}"])
        assert torch.equal(m, o)
    _close(final, ref[f"fi.{case}.final"])


def test_forward_intermediates_with_mask_equals_timm(api):
    ref, _, meta = api
    model = _fresh(api)
    x = golden_input(tuple(meta["input"]))
    mask = ref["mask"].bool()
    with torch.inference_mode():
        final, maps = model.forward_intermediates(x, mask=mask, output_fmt="NHWC")
        feats = model.forward_features(x, mask=mask)
    assert [list(m.shape) for m in maps] == meta["mask"]
    for i, m in enumerate(maps):
        _close(m[..., :8], ref[f"fi.mask.{i}"])
    _close(final, ref["fi.mask.final"])
    _close(feats, ref["features_mask"])
    with pytest.raises(ValueError, match="NHWC"):
        model.forward_intermediates(x, mask=mask)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model.forward_intermediates(x, mask=mask[:, :3], output_fmt="NHWC")


def test_logits_feature_info_and_features_only_default(api):
    ref, _, meta = api
    model = _fresh(api)
    x = golden_input(tuple(meta["input"]))
    with torch.inference_mode():
        _close(model(x), ref["logits"])
    assert model.feature_info == meta["feature_info"]
    info = meta["features_only_default"]
    assert [f["num_chs"] for f in model.feature_info] == info["channels"]
    assert [f["reduction"] for f in model.feature_info] == info["reduction"]
    assert [f["module"] for f in model.feature_info] == info["module_name"]
    assert model.default_out_indices == 4 == len(info["channels"])
    # features_only out_indices=(1, 2, 3): the maps a FeatureGetter asks for
    with torch.inference_mode():
        maps = model.forward_intermediates(x, indices=(1, 2, 3), intermediates_only=True)
    for i, m in enumerate(maps):
        _close(m[:, :8], ref[f"features_only.{i}"])
    assert [m.shape[1] for m in maps] == meta["features_only"]["channels"]


@pytest.mark.parametrize("case", ["prune02", "prune4", "prune1_keephead"])
def test_pruned_models_equal_timm(api, case):
    ref, _, meta = api
    model = _fresh(api)
    kw = {"prune02": dict(indices=[0, 2]), "prune4": dict(indices=4),
          "prune1_keephead": dict(indices=[1], prune_head=False)}[case]
    take = model.prune_intermediate_layers(**kw)
    want = meta[case]
    assert take == want["take"] and len(model.blocks) == want["blocks"]
    assert (model.num_features, model.head_hidden_size, model.num_classes) == (
        want["num_features"], want["head_hidden_size"], want["num_classes"])
    x = golden_input(tuple(meta["input"]))
    with torch.inference_mode():
        _close(model(x), ref[f"{case}.forward"])
        maps = model.forward_intermediates(x, indices=take, intermediates_only=True)
    for i, m in enumerate(maps):
        _close(m[:, :8], ref[f"{case}.fi.{i}"])


def test_reset_classifier_no_pool_equals_timm(api):
    ref, _, meta = api
    model = _fresh(api)
    model.reset_classifier(0, "")
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    want = meta["reset0_nopool"]
    assert (model.num_classes, model.num_features, model.head_hidden_size) == (
        want["num_classes"], want["num_features"], want["head_hidden_size"])
    with torch.inference_mode():
        _close(model(golden_input(tuple(meta["input"]))), ref["reset0_nopool"])
    model.reset_classifier(5, "max")
    assert model.get_classifier().out_features == 5 and model.head.pool_type == "max"
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, "token")


def test_config_options_and_bad_indices():
    model = bettervit.create_model("hiera_nano", drop_rate=0.25, drop_path_rate=0.1, global_pool="avgmax",
                                   num_classes=3, in_chans=1, img_size=(64, 96))
    assert model.head.drop.p == 0.25 and model.head.pool_type == "avgmax" and model.num_classes == 3
    assert model.blocks[-1].drop_path.p == pytest.approx(0.1)
    assert model.pos_embed.shape == (1, 16 * 24, 32)
    assert model(torch.randn(2, 1, 64, 96)).shape == (2, 3)
    old = bettervit.create_model("hiera_nano", head_dropout=0.3)  # the older name of drop_rate
    assert old.head.drop.p == 0.3 and old.config.drop_rate == 0.3
    groups = model.group_matcher()
    assert groups["stem"] and groups["blocks"][0][0] == r"^blocks\.(\d+)"
    x = torch.randn(1, 1, 64, 96)
    for bad in (5, 0, [4], [-5]):
        with pytest.raises(ValueError, match="out of range|1..4"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="norm"):
        model.forward_intermediates(x, norm=True)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")
    with pytest.raises(ValueError, match="global_pool"):
        bettervit.create_model("hiera_nano", global_pool="token")


# --- run-time sizes ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_at_224():
    ref, shapes, meta = read_fixture(SIZES)
    model = bettervit.create_model("hiera_tiny_224")
    weights.load_into(model, reference_checkpoint(shapes), source="fixture")
    return model.eval(), ref, meta


@pytest.mark.parametrize("tag", ["256x192", "160x320"])
def test_run_time_size_equals_timm_created_at_that_size(built_at_224, tag):
    """A model built at 224 takes other H x W: equal to timm's Hiera created at that size with the position
    embedding resampled (bicubic with antialias, timm's convention)."""
    model, ref, meta = built_at_224
    x = golden_input(tuple(meta["sizes"][tag]))
    with torch.inference_mode():
        _close(model(x), ref[f"{tag}.logits"])
        maps = model.forward_intermediates(x, intermediates_only=True)
    h, w = x.shape[-2:]
    assert [tuple(m.shape[-2:]) for m in maps] == [(h // r, w // r) for r in (4, 8, 16, 32)]
    for i, m in enumerate(maps):
        _close(m[:, :4], ref[f"{tag}.stage.{i}"])
    # the resampled table is cached per grid, outside the state dict, and refreshed when the weights change
    assert set(model.state_dict()) == {k for k, _ in model.named_parameters()}
    assert any(k[0] == (h // 4, w // 4) for k in model._pos_cache)


def test_pos_embed_cache_follows_weights_deepcopy_and_training():
    model = bettervit.create_model("hiera_nano", num_classes=4).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        a = model(x)
        assert len(model._pos_cache) == 1
        model.pos_embed.mul_(2)  # version counter moves: the cache is rebuilt
        b = model(x)
    assert not torch.allclose(a, b)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), b, rtol=0, atol=0)
    model.train()
    model(x).sum().backward()  # training at another size: the gradient reaches the stored table
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


def test_non_multiple_of_32_is_refused_in_one_line():
    model = bettervit.create_model("hiera_nano")
    with pytest.raises(ValueError, match="multiples of 32") as e:
        model(torch.randn(1, 3, 64, 80))
    assert "\n" not in str(e.value)


def test_features_only_at_run_time_sizes():
    """A features_only model built at 64 px gives the stage maps of other sizes, equal to forward_intermediates."""
    torch.manual_seed(0)
    feats = bettervit.create_model("hiera_nano", features_only=True, out_indices=(1, 2, 3)).eval()
    assert feats.feature_info.reduction() == [8, 16, 32]
    plain = bettervit.create_model("hiera_nano").eval()
    plain.load_state_dict(feats.model.state_dict(), strict=False)
    for h, w in ((96, 64), (64, 160)):
        x = torch.randn(2, 3, h, w)
        with torch.inference_mode():
            maps = feats(x)
            ref = plain.forward_intermediates(x, indices=(1, 2, 3), intermediates_only=True)
        assert [tuple(m.shape[-2:]) for m in maps] == [(h // r, w // r) for r in (8, 16, 32)]
        for m, r in zip(maps, ref):
            torch.testing.assert_close(m, r, atol=1e-5, rtol=1e-5)
