"""EVA-02 as a timm drop-in: forward_intermediates, prune_intermediate_layers, reset_classifier, feature_info,
group_matcher and the norm placement of other global_pool choices, against timm 1.0.31's EVA on the same weights
(fixture: scripts/golden_eva02.py api; the 224 weights run at 112x112, as timm's dynamic_img_size=True)."""
from __future__ import annotations

import copy

import pytest
import torch

import bettervit
from bettervit import weights
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

TOL = 1e-4
REF, SHAPES, META = read_fixture(GOLDEN / "eva02" / "api_eva02_tiny_patch14_224.safetensors")
CH = 8  # channels stored per map / token


@pytest.fixture(scope="module")
def model():
    m = bettervit.create_model("eva02_tiny_patch14_224").eval()
    weights.load_into(m, reference_checkpoint(SHAPES), source="timm fill")
    return m


def _x() -> torch.Tensor:
    return golden_input(tuple(META["input"]))


def _close(got: torch.Tensor, key: str) -> None:
    ref = REF[key]
    got = got[:, :CH] if got.ndim == 4 else got[..., :CH]
    assert got.shape == ref.shape, (key, got.shape, ref.shape)
    assert (got - ref).abs().max().item() <= TOL, key


CASES = [("none", {}, list(range(12))), ("3", dict(indices=3), [9, 10, 11]), ("0_5_11", dict(indices=[0, 5, 11]), None),
         ("m1", dict(indices=[-1]), None), ("norm", dict(indices=[0, 5, 11], norm=True), None),
         ("nlc", dict(indices=[1, -2], output_fmt="NLC"), None), ("early", dict(indices=[4], stop_early=True), None)]


@pytest.mark.parametrize("key, kw, blocks", CASES, ids=[c[0] for c in CASES])
def test_forward_intermediates_match_timm(model, key, kw, blocks):
    with torch.inference_mode():
        final, maps = model.forward_intermediates(_x(), **kw)
        only = model.forward_intermediates(_x(), intermediates_only=True, **kw)
    n = sum(1 for k in REF if k.startswith(f"fi_{key}_") and not k.endswith("final"))
    assert len(maps) == len(only) == n and (blocks is None or len(blocks) == n)
    _close(final, f"fi_{key}_final")
    for i, (m, o) in enumerate(zip(maps, only)):
        _close(m, f"fi_{key}_{i}")
        assert torch.equal(m, o)
        assert m.shape == ((1, 192, 8, 8) if kw.get("output_fmt", "NCHW") == "NCHW" else (1, 64, 192))


def test_return_prefix_tokens(model):
    with torch.inference_mode():
        out = model.forward_intermediates(_x(), indices=[2, 7], return_prefix_tokens=True, intermediates_only=True)
    for i, (fmap, prefix) in enumerate(out):
        assert prefix.shape == (1, 1, 192)
        _close(fmap, f"prefix_{i}_map")
        _close(prefix, f"prefix_{i}_tokens")


@pytest.mark.parametrize("key, kw", [("5", dict(indices=[1, 5])), ("norm", dict(indices=2, prune_norm=True))])
def test_pruned_model_matches_timm(model, key, kw):
    pruned = copy.deepcopy(model)
    take = pruned.prune_intermediate_layers(**kw)
    assert take == REF[f"prune_{key}_take"].long().tolist()
    assert len(pruned.blocks) == max(take) + 1
    assert pruned.num_classes == 0 and pruned.global_pool == ""
    with torch.inference_mode():
        final, maps = pruned.forward_intermediates(_x(), indices=kw["indices"])
        out = pruned(_x())
    _close(final, f"prune_{key}_final")
    for i, m in enumerate(maps):
        _close(m, f"prune_{key}_{i}")
    assert out.shape == (1, 65, 192)  # no pooling, no fc_norm, no head: every token
    _close(out, f"prune_{key}_forward")


def test_reset_classifier_matches_timm(model):
    m = copy.deepcopy(model)
    m.reset_classifier(0, "")
    assert isinstance(m.get_classifier(), torch.nn.Identity) and m.num_classes == 0
    with torch.inference_mode():
        _close(m(_x()), "reset0_forward")  # every token, through fc_norm
    m.reset_classifier(5, "token")
    assert m.get_classifier().out_features == 5 and m.global_pool == "token" and m.config.num_classes == 5
    with torch.inference_mode():
        assert list(m(_x()).shape) == REF["reset5_shape"].long().tolist()
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(0, "map")


def test_token_pool_classifier_has_a_final_norm_as_timm():
    """global_pool='token' at creation: LayerNorm `norm` on the tokens instead of `fc_norm`, timm's key names."""
    m = bettervit.create_model("eva02_tiny_patch14_336", global_pool="token", num_classes=10).eval()
    token_shapes = {k: tuple(v) for k, v in META["token_shapes"].items()}
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == token_shapes
    weights.load_into(m, reference_checkpoint(token_shapes))
    with torch.inference_mode():
        logits = m(_x())
        final, (inter,) = m.forward_intermediates(_x(), indices=[-1], norm=True)
    assert (logits - REF["token_logits"]).abs().max().item() <= TOL
    _close(final, "token_final")
    _close(inter, "token_inter")


def test_attributes_match_timm(model):
    assert model.feature_info == META["feature_info"]
    assert model.num_features == model.head_hidden_size == META["num_features"] == 192
    assert model.num_prefix_tokens == 1 and model.default_out_indices == 3
    gm = model.group_matcher()
    assert gm["stem"] == META["group_matcher"]["stem"]
    as_json = [[p, list(v) if v else v] for p, v in gm["blocks"]]
    assert as_json == META["group_matcher"]["blocks"]


def test_config_options_as_timm():
    m = bettervit.create_model("eva02_tiny_patch14_224", depth=2, num_classes=3, in_chans=1, drop_rate=0.5,
                               drop_path_rate=0.1, img_size=(112, 84), global_pool="max")
    assert m.grid == (8, 6) and m.pos_embed.shape == (1, 1 + 48, 192) and m.head_drop.p == 0.5
    assert isinstance(m.fc_norm, torch.nn.Identity) and isinstance(m.norm, torch.nn.LayerNorm)
    assert m.blocks[1].drop_path == 0.1
    assert m.eval()(torch.randn(2, 1, 112, 84)).shape == (2, 3)
    with pytest.raises(ValueError, match="global_pool"):
        bettervit.create_model("eva02_tiny_patch14_224", global_pool="map")


def test_features_only_training_step_through_intermediates():
    """A pruned trunk trains through forward_intermediates (what a features_only wrapper calls)."""
    m = bettervit.create_model("eva02_tiny_patch14_224", depth=4)
    take = m.prune_intermediate_layers([1, 2], prune_norm=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    maps = m.forward_intermediates(torch.randn(2, 3, 56, 70), indices=take, intermediates_only=True)
    assert [tuple(f.shape) for f in maps] == [(2, 192, 4, 5)] * 2
    before = m.blocks[0].attn.qkv.weight.detach().clone()
    sum(f.square().mean() for f in maps).backward()
    opt.step()
    assert len(m.blocks) == 3 and not torch.equal(before, m.blocks[0].attn.qkv.weight)
