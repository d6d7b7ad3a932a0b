"""HieraDet (SAM 2's Hiera image encoder): golden parity with timm's sam2_hiera_* and the official SAM 2 trunk at
run-time sizes, the timm model API, features_only, checkpoint key maps, training, compile and export.
Fixtures: scripts/golden_hieradet.py."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

import bettervit
from bettervit import weights
from bettervit.features import FeatureGetter
from bettervit.models.hieradet import (
    HieraDet,
    HieraDetConfig,
    hiera_pos_embed_to_windowed,
    windowed_pos_embed,
)
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

HD = GOLDEN / "hieradet"
VARIANTS = ("sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large")
TOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() <= TOL


@pytest.fixture(scope="module")
def tiny():
    """sam2_hiera_tiny (10 classes) with timm's fixture checkpoint, built once at its default 896 size."""
    ref, shapes, meta = read_fixture(HD / "timm_sam2_hiera_tiny.safetensors")
    model = bettervit.create_model("sam2_hiera_tiny", num_classes=10)
    weights.load_into(model, reference_checkpoint(shapes), source="fixture")
    return model.eval(), ref, shapes, meta


def _mini(**kw) -> HieraDet:
    """A small HieraDet with the released models' code paths: at 64x96 px the stage 3 grid (4x6) is zero-padded to
    6x6-token windows, the pooling block into stage 4 pools padded windows, stage 4 pads 2x3 to 2x4, block 3 is
    global."""
    cfg = HieraDetConfig(
        embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), window_spec=(8, 4, 6, 2), global_att_blocks=(3,),
        img_size=64, **kw,
    )
    return HieraDet(cfg)


# --- configs against timm -------------------------------------------------------------------------------------
def test_variants_equal_timm():
    """Every timm sam2_hiera_* has the same keys and shapes, parameter count, feature_info, windows per block."""
    ref = json.loads((HD / "timm_variants.json").read_text())["variants"]
    assert set(ref) == set(bettervit.list_models("sam2_hiera_*")) == set(VARIANTS)
    for name, r in ref.items():
        with torch.device("meta"):
            model = bettervit.create_model(name)
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == r["shapes"], name
        assert sum(p.numel() for p in model.parameters()) == r["params"]
        assert model.feature_info == r["feature_info"]
        assert [b.window_size for b in model.blocks] == r["windows"]
        assert [i for i, b in enumerate(model.blocks) if b.q_stride] == r["q_pool_blocks"]
        assert (model.num_classes, model.num_features, model.head_hidden_size) == (
            r["num_classes"], r["num_features"], r["head_hidden_size"])


def test_models_table_counts_equal_timm():
    """`bettervit models`: parameters and GMACs at the default size equal timm's (FlopCounterMode, batch 1)."""
    from bettervit.models.facts import count_model

    ref = json.loads((HD / "timm_variants.json").read_text())["variants"]
    for name, r in ref.items():
        info = count_model(name)
        assert info["img_size"] == r["input_size"][-1]
        assert info["params"] == r["params"]
        assert info["flops"] / 2e9 == pytest.approx(r["gmacs"], rel=1e-6)


def test_pretrained_cfg_and_default_weights():
    for name, size, tag in (("sam2_hiera_tiny", 896, "fb_r896"), ("sam2_hiera_large", 1024, "fb_r1024")):
        with torch.device("meta"):
            model = bettervit.create_model(name)
        cfg = model.pretrained_cfg
        assert cfg["hf_hub_id"] == f"timm/{name}.{tag}" and cfg["input_size"] == [3, size, size]
        assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head.fc"
    assert bettervit.get_pretrained_cfg("sam2_hiera_small.fb_r896_2pt1")["hf_hub_id"].endswith("fb_r896_2pt1")
    assert "sam2_hiera_base_plus.fb_r896_2pt1" in bettervit.list_pretrained("sam2_hiera_*")


# --- golden parity --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(256, 256), (256, 384), (224, 224), (192, 320), (96, 96)])
def test_golden_parity_at_runtime_sizes(tiny, hw):
    """One model (built for 896) gives timm's logits, pre-logits and final map at each size; 224, 192x320 and 96
    zero-pad the stage 3/4 windows (14 and 7 tokens) as timm does."""
    model, ref, _, _ = tiny
    s = f"{hw[0]}x{hw[1]}"
    x = golden_input((1, 3, *hw))
    with torch.inference_mode():
        feats = model.forward_features(x)
        _close(model(x), ref[f"logits_{s}"])
        _close(model.forward_head(feats, pre_logits=True), ref[f"pre_logits_{s}"])
    assert feats.shape == (1, hw[0] // 32, hw[1] // 32, 768)
    _close(feats[..., :16], ref[f"features_{s}"])


def test_golden_forward_intermediates(tiny):
    """timm's index meaning (over the 4 stage outputs; over blocks with coarse=False), stop_early, NHWC."""
    model, ref, _, meta = tiny
    x = golden_input((1, 3, 256, 384))
    with torch.inference_mode():
        outs = {k: model.forward_intermediates(x, **kw) for k, kw in meta["fi_calls"].items()}
        only = model.forward_intermediates(x, indices=[1, -1], intermediates_only=True)
    for key, (final, maps) in outs.items():
        _close(final[..., :16], ref[f"fi_{key}_final"])
        if key.startswith("pick02"):  # stored once, as levels 0 and 2 of "all"
            refs = [ref["fi_all_0"], ref["fi_all_2"]]
        else:
            refs = [ref[f"fi_{key}_{j}"] for j in range(len(maps))]
            assert f"fi_{key}_{len(maps)}" not in ref
        assert len(maps) == len(refs)
        for m, r in zip(maps, refs):
            _close(m[..., :4] if key == "neg1_nhwc" else m[:, :4], r)
    assert [tuple(m.shape) for m in outs["all"][1]] == [
        (1, 96, 64, 96), (1, 192, 32, 48), (1, 384, 16, 24), (1, 768, 8, 12)]
    assert len(only) == 2 and torch.equal(only[0], outs["all"][1][1]) and torch.equal(only[1], outs["all"][1][3])
    with pytest.raises(ValueError, match="norm"):
        model.forward_intermediates(x, norm=True)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[4])


def test_golden_features_only(tiny, tmp_path):
    """create_model(features_only=True) loads timm's checkpoint file and gives timm's FeatureGetterNet maps; the
    default out_indices give the 4 inputs of SAM 2's FPN neck."""
    _, ref, shapes, _ = tiny
    path = tmp_path / "timm.safetensors"
    save_file(reference_checkpoint(shapes), str(path))
    x = golden_input((1, 3, 256, 384))
    feat = bettervit.create_model("sam2_hiera_tiny", num_classes=10, features_only=True, out_indices=(1, 3),
                                  checkpoint_path=str(path)).eval()
    assert feat.feature_info.channels() == [192, 768] and feat.feature_info.reduction() == [8, 32]
    assert feat.feature_info.module_name() == ["blocks.2", "blocks.11"]
    with torch.inference_mode():
        maps = feat(x)
    for j, m in enumerate(maps):
        _close(m[:, :4], ref[f"features_only_13_{j}"])
    full = bettervit.create_model("sam2_hiera_tiny", features_only=True, checkpoint_path=str(path)).eval()
    assert full.feature_info.channels() == [96, 192, 384, 768] and full.feature_info.reduction() == [4, 8, 16, 32]
    with torch.inference_mode():
        maps = full(x)
    for j, m in enumerate(maps):
        _close(m[:, :4], ref[f"fi_all_{j}"])


def test_golden_pruned(tiny):
    model, ref, _, meta = tiny
    model = copy.deepcopy(model)
    take = model.prune_intermediate_layers((0, 1))
    assert take == meta["pruned_take"] and len(model.blocks) == meta["pruned_blocks"]
    assert model.num_features == model.head_hidden_size == meta["pruned_num_features"]
    assert model.num_classes == 0 and isinstance(model.head.norm, torch.nn.Identity)
    with torch.inference_mode():
        _close(model.eval()(golden_input((1, 3, 256, 384))), ref["pruned_01"])


def test_golden_base_plus():
    """base_plus: 2 blocks in stage 1, a 14x14 background embedding (interpolated up to 32x48 here)."""
    ref, shapes, meta = read_fixture(HD / "timm_sam2_hiera_base_plus.safetensors")
    with torch.device("meta"):
        model = bettervit.create_model("sam2_hiera_base_plus")
    model.load_state_dict(model.convert_checkpoint(reference_checkpoint(shapes)), strict=True, assign=True)
    with torch.inference_mode():
        final, maps = model.eval().forward_intermediates(golden_input(tuple(meta["input"])))
        _close(model.forward_head(final), ref["pooled"])
    for j, m in enumerate(maps):
        _close(m[:, :8], ref[f"stage{j}"])


def test_golden_official_sam2_checkpoint(tmp_path):
    """A whole SAM 2.1 checkpoint ({"model": ...}, trunk at image_encoder.trunk.*, MLP as mlp.layers.N, plus the
    neck and the rest of SAM 2) loads from a .pt file and gives the official trunk's 4 maps at 256x256 and 256x384."""
    ref, shapes, _ = read_fixture(HD / "official_sam2.1_hiera_tiny.safetensors")
    assert "image_encoder.trunk.blocks.0.mlp.layers.0.weight" in shapes
    sd = reference_checkpoint(shapes)
    sd["image_encoder.neck.convs.0.conv.weight"] = torch.zeros(256, 768, 1, 1)  # dropped: not the trunk
    sd["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sd}, path)
    model = bettervit.create_model("sam2_hiera_tiny", pretrained=str(path)).eval()
    for hw in ((256, 256), (256, 384)):
        with torch.inference_mode():
            maps = model.forward_intermediates(golden_input((1, 3, *hw)), intermediates_only=True)
        for j, m in enumerate(maps):
            _close(m[:, :4], ref[f"stage{j}_{hw[0]}x{hw[1]}"])


# --- run-time sizes -------------------------------------------------------------------------------------------
def test_bad_input_sizes():
    model = _mini().eval()
    assert model.config.input_multiple == 32
    for hw in ((240, 240), (64, 80), (48, 64)):
        with pytest.raises(ValueError, match="multiples of 32"):
            model(torch.zeros(1, 3, *hw))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        HieraDet(HieraDetConfig(img_size=1000))
    with pytest.raises(ValueError, match="must be a multiple of 2"):
        HieraDet(HieraDetConfig(stages=(1, 1, 2, 1), window_spec=(8, 4, 3, 2), global_att_blocks=(), img_size=64))
    with torch.no_grad():  # non-square and below the built size are fine
        assert model.forward_features(torch.zeros(2, 3, 32, 96)).shape == (2, 1, 3, 128)


def test_img_size_sets_default_only():
    """img_size (int or (H, W)) sets pretrained_cfg's input size; no parameter depends on it."""
    with torch.device("meta"):
        a = bettervit.create_model("sam2_hiera_tiny", img_size=(512, 768))
        b = bettervit.create_model("sam2_hiera_tiny")
    assert a.pretrained_cfg["input_size"] == [3, 512, 768] and b.pretrained_cfg["input_size"] == [3, 896, 896]
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_windowed_pos_embed_tiles_the_window():
    """Only the background is interpolated: the embedding minus the background is the window pattern repeated."""
    bkg, win = torch.randn(1, 4, 7, 7), torch.randn(1, 4, 8, 8)
    pos = windowed_pos_embed(bkg, win, (16, 24))  # (1, 16, 24, C)
    rest = pos.permute(0, 3, 1, 2) - torch.nn.functional.interpolate(bkg, size=(16, 24), mode="bicubic")
    torch.testing.assert_close(rest, win.repeat(1, 1, 2, 3))


# --- the model API --------------------------------------------------------------------------------------------
def test_model_api():
    with torch.device("meta"):  # shapes only: forward runs on meta tensors
        model = bettervit.create_model("sam2_hiera_tiny", num_classes=5, drop_rate=0.1, drop_path_rate=0.1,
                                       global_pool="max")
    cfg = model.config
    for f in ("num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "img_size"):
        assert f in {x.name for x in dataclasses.fields(cfg)}
    assert (cfg.num_classes, cfg.global_pool, cfg.drop_rate) == (5, "max", 0.1)
    assert model.head.drop.p == 0.1 and model.blocks[-1].drop_path1.p == pytest.approx(0.1)
    assert model.default_out_indices == 4 and model.default_cfg is model.pretrained_cfg
    assert model.get_classifier() is model.head.fc and model.get_classifier().out_features == 5
    assert model.no_weight_decay() == {"pos_embed", "pos_embed_window"}
    gm = model.group_matcher()
    assert gm["stem"] == r"^pos_embed|pos_embed_window|patch_embed" and gm["blocks"] == [(r"^blocks\.(\d+)", None)]
    ids = model.param_layer_ids()
    assert model.num_layer_ids() == 14
    assert ids["pos_embed_window"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.11.mlp.fc2.bias"] == 12
    assert ids["head.fc.weight"] == ids["head.norm.weight"] == 13
    x = torch.empty(1, 3, 64, 64, device="meta")
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, 5)
        model.reset_classifier(0, "")
        assert model.num_classes == 0 and model.get_classifier().__class__ is torch.nn.Identity
        assert model(x).shape == (1, 2, 2, 768)  # no pooling: the normed map
        model.reset_classifier(3, "avg")
        assert model(x).shape == (1, 3) and model.head_hidden_size == 768
        assert model.head.fc.weight.device.type == "meta"  # the new classifier follows the model's device


def test_grad_checkpointing_and_in_chans():
    model = _mini().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model.forward_features(x)
    model.set_grad_checkpointing()
    model.train()
    out = model.forward_features(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("head."))
    with torch.device("meta"):
        gray = bettervit.create_model("sam2_hiera_tiny", in_chans=1)
    assert gray.patch_embed.proj.weight.shape[1] == 1


def test_training_step_through_features_only():
    """A detection-style step: the 4 FPN inputs feed a loss; every kept parameter learns, the loss goes down."""
    torch.manual_seed(0)
    feat = FeatureGetter(_mini(), HieraDet.default_out_indices)
    assert feat.feature_info.channels() == [16, 32, 64, 128] and feat.feature_info.reduction() == [4, 8, 16, 32]
    neck = torch.nn.ModuleList(torch.nn.Conv2d(c, 8, 1) for c in feat.feature_info.channels())
    opt = torch.optim.AdamW(list(feat.parameters()) + list(neck.parameters()), lr=1e-3)
    x, target = torch.randn(2, 3, 64, 96), torch.randn(2, 8, 2, 3)
    feat.train()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        maps = feat(x)
        assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
        pooled = [torch.nn.functional.adaptive_avg_pool2d(n(m), (2, 3)) for n, m in zip(neck, maps)]
        loss = sum(((p - target) ** 2).mean() for p in pooled)
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in feat.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# --- checkpoints ----------------------------------------------------------------------------------------------
def test_hiera_pos_embed_to_windowed():
    """Exact for a window pattern plus a constant; for a general embedding, better than the background alone."""
    C, win = 4, torch.randn(1, 4, 8, 8)
    pos = (win.repeat(1, 1, 7, 7) + 0.3).permute(0, 2, 3, 1).reshape(1, 56 * 56, C)
    bkg, w = hiera_pos_embed_to_windowed(pos, (56, 56), 8, (7, 7))
    assert bkg.shape == (1, C, 7, 7) and w.shape == (1, C, 8, 8)
    torch.testing.assert_close(windowed_pos_embed(bkg, w, (56, 56)).reshape(1, -1, C), pos, atol=1e-5, rtol=0)
    pos = torch.randn(1, 56 * 56, C)
    bkg, w = hiera_pos_embed_to_windowed(pos, (56, 56), 8, (7, 7))
    err = (windowed_pos_embed(bkg, w, (56, 56)).reshape(1, -1, C) - pos).pow(2).mean()
    err_bkg = (windowed_pos_embed(bkg, torch.zeros_like(w), (56, 56)).reshape(1, -1, C) - pos).pow(2).mean()
    assert err < err_bkg
    # the exact alternative (docs/hieradet.md): a background as large as the grid and a zero window
    full = pos.reshape(1, 56, 56, C).permute(0, 3, 1, 2)
    torch.testing.assert_close(windowed_pos_embed(full, torch.zeros(1, C, 8, 8), (56, 56)).reshape(1, -1, C), pos)
    with pytest.raises(ValueError, match="multiple of the window"):
        hiera_pos_embed_to_windowed(torch.zeros(1, 60 * 60, C), (60, 60), 8, (7, 7))


def test_init_from_image_hiera_checkpoint():
    """timm's hiera_tiny_224 checkpoint (same blocks, a raster position embedding, a 1000-class head) initialises
    sam2_hiera_tiny: every block weight carries over, the position embedding is split into background + window."""
    _, shapes, _ = read_fixture(GOLDEN / "hiera" / "timm_hiera_tiny_224.safetensors")
    sd = reference_checkpoint(shapes)
    model = bettervit.create_model("sam2_hiera_tiny")
    weights.load_into(model, sd, source="hiera_tiny_224")
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"])
    assert model.pos_embed.shape == (1, 96, 7, 7) and model.pos_embed_window.shape == (1, 96, 8, 8)
    bkg, win = hiera_pos_embed_to_windowed(sd["pos_embed"], (56, 56), 8, (7, 7))
    torch.testing.assert_close(model.pos_embed_window.data, win)


# --- compile and export ---------------------------------------------------------------------------------------
def test_compile_fullgraph_matches_eager():
    """torch.compile(fullgraph=True): inference, and a training step's loss and gradients, equal eager."""
    torch.manual_seed(0)
    model = _mini().eval()
    x = torch.randn(2, 3, 64, 96)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-4)
    model.train()
    step = torch.compile(lambda inp: model.forward_intermediates(inp, intermediates_only=True)[-1].square().mean(),
                         fullgraph=True, backend="aot_eager")
    loss_c = step(x)
    loss_c.backward()
    grads_c = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss_e = model.forward_intermediates(x, intermediates_only=True)[-1].square().mean()
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e, atol=1e-6, rtol=1e-5)
    assert grads_c.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads_c[n], p.grad, atol=1e-6, rtol=1e-4)


def test_export_dynamic_batch():
    model = _mini().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes=({0: batch},))
    x = torch.randn(5, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=1e-4)
