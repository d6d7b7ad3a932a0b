"""EVA (the original ViT-g/14, Fang et al. CVPR 2023) against timm 1.0.31's ``eva_giant_*``.

The giants (1B parameters) are compared by structure: state-dict key names and shapes, parameter counts, GMACs in the
models table, heads and pretrained configs, all recorded from timm on the meta device. Values are compared on the same
architecture at a small width (timm's ``eva_giant_*`` entry points with ``embed_dim=64, depth=3, num_heads=4``, built
the same way here): outputs at the default and a non-square run-time size, the timm model API, the CLIP tower's head.
Fixtures: scripts/golden_eva.py.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

import bettervit
from bettervit.models.facts import model_counts
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

TOL = 1e-4
EVA = GOLDEN / "eva"
VARIANTS = json.loads((EVA / "timm_variants.json").read_text())["variants"]
REF, SHAPES, META = read_fixture(EVA / "small_eva_giant_patch14_224.safetensors")
CLIP_REF, CLIP_SHAPES, CLIP_META = read_fixture(EVA / "small_eva_giant_patch14_clip_224.safetensors")
SMALL = META["small"]
CH = 8  # channels stored per map / token


def _small(name: str = "eva_giant_patch14_224", shapes: dict = SHAPES, **kw) -> bettervit.models.eva.Eva:
    """The giant variant at the small width, loaded strictly with timm's filled checkpoint (same keys, same shapes)."""
    m = bettervit.create_model(name, **SMALL, **kw).eval()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes
    m.load_state_dict(reference_checkpoint(shapes), strict=True)
    return m


@pytest.fixture(scope="module")
def model():
    return _small()


def _close(got: torch.Tensor, ref: torch.Tensor, key: str = "") -> None:
    got = got[:, :CH] if got.ndim == 4 else got[..., :CH] if ref.shape[-1] == CH else got
    assert got.shape == ref.shape, (key, got.shape, ref.shape)
    assert (got - ref).abs().max().item() <= TOL, key


def _api_x() -> torch.Tensor:
    return golden_input(tuple(META["api_input"]))


# --- the real giants, by structure ----------------------------------------------------------------------------------
def test_every_timm_eva_giant_is_registered():
    assert set(bettervit.list_models("eva_giant*")) == set(VARIANTS)
    assert bettervit.list_models(module="eva") == sorted(VARIANTS)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_giant_state_dict_and_head_equal_timm(name):
    """Key names and shapes (timm checkpoints load as they are), parameter count, head, pooling and norm placement."""
    r = VARIANTS[name]
    with torch.device("meta"):
        m = bettervit.create_model(name)
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == r["shapes"]
    assert sum(p.numel() for p in m.parameters()) == r["params"]
    assert (m.num_classes, m.global_pool, m.num_features, m.head_hidden_size) == (
        r["num_classes"], r["global_pool"], r["num_features"], r["head_hidden_size"])
    assert not isinstance(m.fc_norm, torch.nn.Identity) == r["fc_norm"]
    assert not isinstance(m.norm, torch.nn.Identity) == r["norm"]
    assert len(m.feature_info) == r["feature_info_len"] and m.feature_info[-1] == r["feature_info_last"]
    assert m.blocks[0].mlp.fc1.out_features == r["mlp_hidden"] == 6144
    assert m.config.mlp == "gelu" and not m.config.rope and m.num_prefix_tokens == 1


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_models_table_counts_equal_timm(name):
    """`bettervit models`: parameters and FLOPs (so GMACs) at the default size equal timm's FlopCounterMode count."""
    r = VARIANTS[name]
    size, params, flops = model_counts(name)
    assert size == r["pretrained_cfg"]["input_size"][-1]
    assert params == r["params"]
    assert flops == r["flops"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_pretrained_cfg_and_tags_equal_timm(name):
    r = VARIANTS[name]
    with torch.device("meta"):
        m = bettervit.create_model(name)
    for k, v in r["pretrained_cfg"].items():
        got = m.pretrained_cfg.get(k)
        assert (list(got) if isinstance(got, (tuple, list)) else got) == v, (name, k)
    assert m.default_cfg == m.pretrained_cfg
    assert bettervit.list_pretrained(name + ".*") == sorted(f"{name}.{t}" for t in r["pretrained_tags"])


# --- values at the small width ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [tuple(s) for s in META["sizes"]], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_small_parity_with_timm(model, hw):
    """Logits, pooled features and tokens equal timm's at the built size and a non-square run-time size (timm with
    dynamic_img_size=True: the absolute position embedding resampled bicubically to the grid)."""
    s = f"{hw[0]}x{hw[1]}"
    x = golden_input((1, 3, *hw))
    with torch.inference_mode():
        feats = model.forward_features(x)
        assert feats.shape == (1, 1 + (hw[0] // 14) * (hw[1] // 14), SMALL["embed_dim"])
        _close(feats[:, :: META["token_step"]], REF[f"tokens_{s}"], "tokens")
        _close(model.forward_head(feats, pre_logits=True), REF[f"pooled_{s}"], "pooled")
        logits = model(x)
    assert logits.shape == (1, 1000)
    _close(logits, REF[f"logits_{s}"], "logits")


def test_dynamic_img_pad_as_timm():
    m = _small(dynamic_img_pad=True)
    x = golden_input((1, 3, 100, 130))
    with torch.inference_mode():
        _close(m(x), REF["pad_logits_100x130"], "logits")
        (f,) = m.forward_intermediates(x, indices=[-1], intermediates_only=True)
    assert f.shape == (1, 64, 8, 10)  # ceil(100 / 14), ceil(130 / 14)
    _close(f, REF["pad_block2_100x130"], "block2")


def test_clip_tower_head_as_timm():
    """eva_giant_patch14_clip_224: class token after the final norm, projected to 1024 (timm's global_pool='token');
    224 and a non-square run-time size."""
    m = _small("eva_giant_patch14_clip_224", CLIP_SHAPES)
    assert (m.num_classes, m.global_pool) == (CLIP_META["num_classes"], CLIP_META["global_pool"]) == (1024, "token")
    assert isinstance(m.fc_norm, torch.nn.Identity) and isinstance(m.norm, torch.nn.LayerNorm)
    for hw in ((224, 224), (126, 196)):
        s = f"{hw[0]}x{hw[1]}"
        x = golden_input((1, 3, *hw))
        with torch.inference_mode():
            feats = m.forward_features(x)
            _close(feats[:, :: CLIP_META["token_step"]], CLIP_REF[f"tokens_{s}"], "tokens")
            _close(m.forward_head(feats, pre_logits=True), CLIP_REF[f"pre_logits_{s}"], "pre_logits")
            logits = m(x)
            final, maps = m.forward_intermediates(x, indices=[0, -1], norm=True)
        assert logits.shape == (1, 1024)
        _close(logits, CLIP_REF[f"logits_{s}"], "logits")
        _close(final, CLIP_REF[f"final_{s}"], "final")
        for i, f in enumerate(maps):
            _close(f, CLIP_REF[f"inter{i}_{s}"], f"inter{i}")


# --- timm's model API at the small width (non-square input) -------------------------------------------------------
CASES = [("none", {}, 3), ("2", dict(indices=2), 2), ("0_2", dict(indices=[0, 2]), 2), ("m1", dict(indices=[-1]), 1),
         ("norm", dict(indices=[0, 2], norm=True), 2), ("nlc", dict(indices=[1, -1], output_fmt="NLC"), 2),
         ("early", dict(indices=[1], stop_early=True), 1)]


@pytest.mark.parametrize("key, kw, n", CASES, ids=[c[0] for c in CASES])
def test_forward_intermediates_match_timm(model, key, kw, n):
    with torch.inference_mode():
        final, maps = model.forward_intermediates(_api_x(), **kw)
        only = model.forward_intermediates(_api_x(), intermediates_only=True, **kw)
    assert len(maps) == len(only) == n == sum(1 for k in REF if k.startswith(f"fi_{key}_") and k[-1].isdigit())
    _close(final, REF[f"fi_{key}_final"], "final")
    for i, (f, o) in enumerate(zip(maps, only)):
        assert torch.equal(f, o)
        assert f.shape == ((1, 64, 12, 18) if kw.get("output_fmt", "NCHW") == "NCHW" else (1, 216, 64))
        _close(f, REF[f"fi_{key}_{i}"], f"fi_{key}_{i}")


def test_return_prefix_tokens(model):
    with torch.inference_mode():
        out = model.forward_intermediates(_api_x(), indices=[0, 2], return_prefix_tokens=True, intermediates_only=True)
    for i, (fmap, prefix) in enumerate(out):
        assert prefix.shape == (1, 1, 64)
        _close(fmap, REF[f"prefix_{i}_map"])
        _close(prefix, REF[f"prefix_{i}_tokens"])


@pytest.mark.parametrize("key, kw", [("1", dict(indices=[0, 1])), ("norm", dict(indices=1, prune_norm=True))])
def test_pruned_model_matches_timm(model, key, kw):
    pruned = copy.deepcopy(model)
    take = pruned.prune_intermediate_layers(**kw)
    assert take == REF[f"prune_{key}_take"].long().tolist()
    assert len(pruned.blocks) == max(take) + 1 and pruned.num_classes == 0 and pruned.global_pool == ""
    with torch.inference_mode():
        final, maps = pruned.forward_intermediates(_api_x(), indices=kw["indices"])
        out = pruned(_api_x())
    _close(final, REF[f"prune_{key}_final"])
    for i, f in enumerate(maps):
        _close(f, REF[f"prune_{key}_{i}"])
    assert out.shape == (1, 1 + 216, 64)  # no pooling, no fc_norm, no head: every token
    _close(out, REF[f"prune_{key}_forward"])


def test_reset_classifier_matches_timm(model):
    m = copy.deepcopy(model)
    m.reset_classifier(0, "")
    assert isinstance(m.get_classifier(), torch.nn.Identity) and m.num_classes == 0
    with torch.inference_mode():
        _close(m(_api_x()), REF["reset0_forward"])  # every token, through fc_norm
    m.reset_classifier(7, "token")
    assert m.get_classifier().out_features == 7 and m.global_pool == "token"
    with torch.inference_mode():
        assert m(_api_x()).shape == (1, 7)
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(0, "map")


def test_features_only_matches_timm():
    feat = bettervit.create_model("eva_giant_patch14_224", features_only=True, out_indices=(0, 2), **SMALL).eval()
    shapes = {k: tuple(v) for k, v in META["features_shapes"].items()}  # timm's wrapper: "model." + pruned trunk
    assert {k: tuple(v.shape) for k, v in feat.state_dict().items()} == shapes
    feat.load_state_dict(reference_checkpoint(shapes), strict=True)
    assert feat.feature_info.channels() == META["features_channels"]
    assert feat.feature_info.reduction() == META["features_reduction"]
    assert feat.feature_info.module_name() == META["features_modules"]
    with torch.inference_mode():
        maps = feat(_api_x())
    assert len(maps) == 2
    for i, f in enumerate(maps):
        assert f.shape == (1, 64, 12, 18)
        _close(f, REF[f"features_{i}"], f"features_{i}")


def test_attributes_and_pretrained_cfg_match_timm(model):
    assert model.feature_info == META["feature_info"]
    assert model.num_features == model.head_hidden_size == META["num_features"] == META["head_hidden_size"]
    assert model.default_out_indices == 3
    gm = model.group_matcher()
    assert gm["stem"] == META["group_matcher"]["stem"]
    assert [[p, list(v) if v else v] for p, v in gm["blocks"]] == META["group_matcher"]["blocks"]
    assert model.no_weight_decay() <= set(META["no_weight_decay"])
    for k, v in META["pretrained_cfg"].items():
        got = model.pretrained_cfg.get(k)
        assert (list(got) if isinstance(got, (tuple, list)) else got) == v, k


# --- EVA-specific behaviour ----------------------------------------------------------------------------------------
def test_no_rope_and_gelu_mlp(model):
    """EVA has no rotary tables (the position embedding is the only position signal) and a GELU MLP: fc1, fc2."""
    assert not any("rope" in n for n, _ in model.named_buffers())
    mlp = model.blocks[0].mlp
    assert {n for n, _ in mlp.named_parameters()} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        assert torch.allclose(mlp(x), mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x))))
    # permuting the patch tokens changes the output only through the position embedding: with it zeroed, a permuted
    # image of whole patches gives the same pooled features (no other position signal in the model)
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.pos_embed.zero_()
    x = golden_input((1, 3, 28, 42))
    patches = x.unfold(2, 14, 14).unfold(3, 14, 14)  # (1, 3, 2, 3, 14, 14)
    swapped = patches.flip(2).flip(3).permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 28, 42)
    with torch.inference_mode():
        assert torch.allclose(m.forward_head(m.forward_features(x), pre_logits=True),
                              m.forward_head(m.forward_features(swapped), pre_logits=True), atol=1e-5)


def test_trains_and_checkpoints_gradients():
    m = bettervit.create_model("eva_giant_patch14_224", **SMALL, num_classes=5, drop_path_rate=0.1)
    m.set_grad_checkpointing(True)
    loss = m(torch.randn(2, 3, 56, 70)).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_bad_input_is_one_line():
    m = bettervit.create_model("eva_giant_patch14_224", **SMALL)
    with pytest.raises(ValueError, match="14"):
        m(torch.randn(1, 3, 100, 112))
    with pytest.raises(ValueError, match="mlp"):
        bettervit.create_model("eva_giant_patch14_224", **SMALL, mlp="relu")


# --- outside eager PyTorch -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["eva_giant_patch14_224", "eva_giant_patch14_clip_224"])
def test_optimize_equals_plain(name):
    """bettervit.optimize (oneDNN-packed weights, exact GELU fused into fc1, no rotation) equals the plain model, at
    the built size and at run-time sizes, and writes the plain keys back."""
    from bettervit.optimize import optimize
    from bettervit.optimize.onednn import available

    if not available():
        pytest.skip("no oneDNN in this torch build")
    torch.manual_seed(0)
    plain = bettervit.create_model(name, **SMALL).eval()
    with torch.no_grad():  # non-trivial biases and norms, so every fused term matters
        for p in plain.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    fast = optimize(plain)
    assert type(fast.blocks[0]).__name__ == "FastBlock"
    assert not any(isinstance(m, torch.nn.Linear) for m in fast.blocks.modules())  # packed weights only
    sd, plain_sd = fast.state_dict(), plain.state_dict()
    assert sd.keys() == plain_sd.keys() and all(torch.equal(sd[k], plain_sd[k]) for k in sd)
    with torch.inference_mode():
        for h, w in [(224, 224), (98, 140)]:
            x = torch.randn(2, 3, h, w)
            torch.testing.assert_close(fast(x), plain(x), atol=TOL, rtol=0)
            got = fast.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
            for g, r in zip(got, plain.forward_intermediates(x, indices=[0, 2], intermediates_only=True)):
                torch.testing.assert_close(g, r, atol=TOL, rtol=0)


def test_torch_export_dynamic_height_width(model):
    """torch.export with dynamic batch, height and width: the position embedding resampled in the graph."""
    from torch.export import Dim

    b, gh, gw = Dim("batch", min=1, max=8), Dim("gh", min=2, max=32), Dim("gw", min=2, max=32)
    ep = torch.export.export(model, (torch.randn(2, 3, 112, 112),),
                             dynamic_shapes=({0: b, 2: 14 * gh, 3: 14 * gw},))
    with torch.no_grad():
        for shape in [(1, 3, 224, 224), (2, 3, 168, 252)]:
            x = torch.randn(shape)
            torch.testing.assert_close(ep.module()(x), model(x), atol=TOL, rtol=0)


# --- checkpoint formats ----------------------------------------------------------------------------------------------
def test_open_clip_visual_prefix_and_other_grid_load():
    """An open_clip-style file (image tower under ``visual.``, text tower beside it) loads into the CLIP tower; 224
    weights load into the 336 variant with the position embedding resized to its 24x24 grid."""
    from bettervit import weights

    ref = _small("eva_giant_patch14_clip_224", CLIP_SHAPES)
    sd = {f"visual.{k}": v for k, v in reference_checkpoint(CLIP_SHAPES).items()}
    sd.update({"text.token_embedding.weight": torch.zeros(4, 8), "logit_scale": torch.ones(())})
    m = bettervit.create_model("eva_giant_patch14_clip_224", **SMALL).eval()
    weights.load_into(m, sd)
    x = golden_input((1, 3, 126, 196))
    with torch.inference_mode():
        assert torch.equal(m(x), ref(x))
    big = bettervit.create_model("eva_giant_patch14_336", **SMALL).eval()
    weights.load_into(big, reference_checkpoint(SHAPES))
    assert big.pos_embed.shape == (1, 1 + 24 * 24, 64)
    small = _small()
    with torch.inference_mode():  # same weights; the 224 model resamples to 24x24 at run time the same way
        torch.testing.assert_close(big.pos_embed_for((24, 24)), small.pos_embed_for((24, 24)), atol=1e-6, rtol=0)


def test_model_built_under_inference_mode_runs_at_other_sizes():
    with torch.inference_mode():
        m = _small()
        assert m.pos_embed.is_inference()
        _close(m(golden_input((1, 3, 168, 252))), REF["logits_168x252"], "logits")


def test_vitdet_windows_covering_the_grid_equal_global_attention():
    """EVA as a ViTDet trunk (no RoPE: windows only restrict attention): one window over the whole 8x8 grid gives the
    global-attention model; the feature pyramid gets strides 4..32 with a 16-pixel patch."""
    from bettervit.models.vitdet import vitdet_eva02

    kw = dict(**SMALL, num_classes=0, class_token=False, img_size=112)
    windowed = bettervit.create_model("eva_giant_patch14_224", window_size=8, **kw).eval()
    plain = bettervit.create_model("eva_giant_patch14_224", **kw).eval()
    plain.load_state_dict(windowed.state_dict())
    x = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        torch.testing.assert_close(windowed.forward_features(x), plain.forward_features(x), atol=1e-5, rtol=0)
        maps = vitdet_eva02("eva_giant_patch14_224", img_size=128, window_size=4, num_global=1, **SMALL).eval()(
            torch.randn(1, 3, 128, 192))
    assert {k: tuple(v.shape[-2:]) for k, v in maps.items()} == {"p2": (32, 48), "p3": (16, 24), "p4": (8, 12),
                                                                   "p5": (4, 6)}
