"""Hiera classifier: golden parity with timm and the official implementation, the model API, token order, training
behaviour and bad input. Fixtures: scripts/golden_hiera.py."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import bettervit
from bettervit import weights
from bettervit.factory import get_entry
from bettervit.models.hiera import Hiera, HieraConfig, reroll, reroll_units, unroll
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint
from helpers import slow_cases

HIERA = GOLDEN / "hiera"
SIZES = ("tiny", "small", "base", "base_plus", "large", "huge")
PARAMS_M = dict(zip(SIZES, (27.91, 35.01, 51.52, 69.90, 213.74, 672.78)))  # as timm and the Hiera paper report them


def _build_loaded(name: str, sd: dict[str, torch.Tensor], **kw) -> Hiera:
    """Model with ``sd`` loaded. Only tiny goes through random init + ``weights.load_into``; the bigger variants are
    built on the meta device and take the tensors (same key conversion, strict)."""
    if name.startswith("hiera_tiny"):
        model = bettervit.create_model(name, **kw)
        weights.load_into(model, sd, source="fixture")
    else:
        with torch.device("meta"):
            model = bettervit.create_model(name, **kw)
        model.load_state_dict(model.convert_checkpoint(sd), strict=True, assign=True)
    return model.eval()


def test_every_variant_has_a_timm_fixture():
    names = {p.stem.removeprefix("timm_") for p in HIERA.glob("timm_hiera_*.safetensors")}
    assert names == set(bettervit.list_models("hiera_*_224")) == {f"hiera_{s}_224" for s in SIZES}


@pytest.mark.parametrize("size", slow_cases(list(SIZES), {"large", "huge"}))
def test_golden_parity_with_timm(size):
    """timm's checkpoint gives timm's logits (fp32, max abs diff <= 1e-4); tiny also checks the stage maps."""
    name = f"hiera_{size}_224"
    ref, shapes, meta = read_fixture(HIERA / f"timm_{name}.safetensors")
    model = _build_loaded(name, reference_checkpoint(shapes))
    x = golden_input(tuple(meta["input"]))
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape == ref["logits"].shape == (1, 1000)
    assert (logits - ref["logits"]).abs().max().item() <= 1e-4
    if "stage0" in ref:  # forward_intermediates: NCHW, spatial order, one per stage, as timm's
        with torch.inference_mode():
            feats = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(f.shape) for f in feats] == [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14), (1, 768, 7, 7)]
        for i, f in enumerate(feats):
            assert (f[:, :8] - ref[f"stage{i}"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("tag", ["hiera_tiny_224", "hiera_tiny_224_at64", "hiera_base_plus_224"])
def test_golden_parity_with_official(tag, tmp_path):
    """An official hiera-transformer checkpoint (``model_state`` wrapper, ``norm.``, ``head.projection.``) loaded from
    a .pth file gives the official model's logits."""
    ref, shapes, meta = read_fixture(HIERA / f"official_{tag}.safetensors")
    assert "head.projection.weight" in shapes and "norm.weight" in shapes
    name = tag.split("_at")[0]
    if name == "hiera_tiny_224":  # the whole path: .pth file -> unwrap -> convert -> strict load
        path = tmp_path / "official.pth"
        torch.save({"model_state": reference_checkpoint(shapes), "epoch": 1}, path)
        model = bettervit.create_model(name, pretrained=str(path), img_size=meta["img_size"]).eval()
    else:
        model = _build_loaded(name, weights.unwrap({"model_state": reference_checkpoint(shapes)}), img_size=meta["img_size"])
    with torch.inference_mode():
        logits = model(golden_input(tuple(meta["input"])))
    assert (logits - ref["logits"]).abs().max().item() <= 1e-4


def test_official_mae_checkpoint_encoder_loads_into_classifier():
    """The encoder of an official MAE checkpoint gives the official classifier's last stage map; the MAE-only parts
    are dropped and encoder_norm becomes the head norm (the class layer stays fresh)."""
    ref, shapes, _ = read_fixture(HIERA / "official_mae_hiera_tiny_224.safetensors")
    sd = reference_checkpoint(shapes)
    model = bettervit.create_model("hiera_tiny_224")
    fresh_fc = model.head.fc.weight.clone()
    weights.load_into(model, sd, source="official MAE")
    assert torch.equal(model.head.norm.weight, sd["encoder_norm.weight"])
    assert torch.equal(model.head.fc.weight, fresh_fc)
    with torch.inference_mode():
        last = model.eval().forward_intermediates(golden_input((1, 3, 224, 224)), indices=[-1], intermediates_only=True)[0]
    assert (last - ref["encoder_stage3"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size", SIZES)
def test_parameter_counts(size):
    """Equal to the counts timm and the Hiera paper report (2 decimals, in M) and exactly to the reference checkpoint."""
    _, shapes, _ = read_fixture(HIERA / f"timm_hiera_{size}_224.safetensors")
    with torch.device("meta"):
        model = bettervit.create_model(f"hiera_{size}_224")
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 2) == PARAMS_M[size]
    assert n == sum(torch.Size(s).numel() for s in shapes.values())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


@pytest.mark.parametrize("img_size", [64, 96, 160, 256])
def test_any_multiple_of_32(img_size):
    model = bettervit.create_model("hiera_tiny_224", img_size=img_size, num_classes=10).eval()
    x = torch.randn(1, 3, img_size, img_size)
    with torch.inference_mode():
        assert model(x).shape == (1, 10)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[-1] for f in feats] == [img_size // 4, img_size // 8, img_size // 16, img_size // 32]


def test_pos_embed_resized_from_224_checkpoint(tmp_path):
    _, shapes, _ = read_fixture(HIERA / "timm_hiera_tiny_224.safetensors")
    sd = reference_checkpoint(shapes)
    model = bettervit.create_model("hiera_tiny_224", img_size=256).eval()
    weights.load_into(model, sd)
    assert model.pos_embed.shape == (1, 64 * 64, 96)
    # a smooth grid survives a resize and back: the resize is a real interpolation, not a crop or a tile
    from bettervit.layers.pos_embed import resample_abs_pos_embed as resample

    ramp = torch.linspace(0, 1, 56).view(1, 56, 1, 1).expand(1, 56, 56, 4).reshape(1, 56 * 56, 4)
    back = resample(resample(ramp, (64, 64)), (56, 56))
    assert (back - ramp).abs().max() < 1e-2
    assert torch.equal(resample(ramp, (56, 56)), ramp)
    with torch.inference_mode():
        assert torch.isfinite(model(golden_input((1, 3, 256, 256)))).all()


def test_unroll_reroll_are_inverse_and_units_are_contiguous():
    B, S, C = 2, 16, 3
    x = torch.randn(B, S, S, C)
    for levels in range(4):
        assert torch.equal(reroll(unroll(x, levels), (S, S), levels), x)
    # with 3 levels the first 64 tokens are exactly the top-left 8x8 mask unit, and the first quarter of them is
    # the top-left token of every 2x2 pooling window in that unit
    t = unroll(x, 3)
    unit = x[:, :8, :8].reshape(B, 64, C)
    assert torch.equal(t[:, :64].sort(1).values, unit.sort(1).values)
    assert torch.equal(t[:, :16].sort(1).values, x[:, 0:8:2, 0:8:2].reshape(B, 16, C).sort(1).values)
    assert torch.equal(reroll_units(t, 4, 3)[:, 0], x[:, :8, :8])


def test_head_returns_logits_in_train_and_eval():
    model = bettervit.create_model("hiera_nano", num_classes=5)
    torch.nn.init.normal_(model.head.fc.weight, std=1.0)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        ev = model(x)
        model.train()
        tr = model(x)
    torch.testing.assert_close(ev, tr)
    assert not torch.allclose(ev.sum(-1), torch.ones(2))  # no softmax


def test_global_attention_uses_fused_sdpa_kernel():
    """The attention reaches SDPA's fused CPU kernel (4-D inputs), never the math fallback."""
    model = bettervit.create_model("hiera_nano").eval()
    with torch.profiler.profile() as prof, torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    names = [e.key for e in prof.key_averages()]
    assert any("flash_attention" in n for n in names), names
    assert not any("_scaled_dot_product_attention_math" in n for n in names)


def test_every_parameter_gets_a_gradient():
    model = bettervit.create_model("hiera_nano", num_classes=3).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_grad_checkpointing_is_identical():
    model = bettervit.create_model("hiera_nano", num_classes=3).train()
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    a, b = model(x), twin(x)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    a.sum().backward()
    b.sum().backward()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_state_dict_round_trip(tmp_path):
    model = bettervit.create_model("hiera_nano", num_classes=7).eval()
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    again = bettervit.create_model("hiera_nano", num_classes=7, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))


def test_other_num_classes_keeps_fresh_head(tmp_path):
    _, shapes, _ = read_fixture(HIERA / "timm_hiera_tiny_224.safetensors")
    path = tmp_path / "timm.pth"
    torch.save(reference_checkpoint(shapes), path)
    model = bettervit.create_model("hiera_tiny_224", num_classes=10, pretrained=str(path))
    assert model.head.fc.out_features == 10


def test_api_surface():
    model = bettervit.create_model("hiera_tiny_224")
    assert dataclasses.is_dataclass(model.config) and isinstance(model.config, HieraConfig)
    assert model.no_weight_decay() == {"pos_embed"}
    ids = model.param_layer_ids()
    assert ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.11.mlp.fc2.bias"] == 12
    assert ids["head.fc.weight"] == model.num_layer_ids() - 1 == 13
    model.reset_classifier(4)
    assert model.head.fc.out_features == 4 and model.config.num_classes == 4
    with torch.inference_mode():
        x = torch.randn(1, 3, 224, 224)
        feats = model.forward_features(x)
        assert feats.shape == (1, 49, 768)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 768)
    model.reset_classifier(0)
    assert isinstance(model.head.fc, torch.nn.Identity)
    assert get_entry("hiera_tiny_224").weights == "timm/hiera_tiny_224.mae_in1k_ft_in1k"
    assert get_entry("hiera_nano").weights is None


def test_compile_runs_smallest_variant():
    model = bettervit.create_model("hiera_nano").eval()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_bad_input():
    model = bettervit.create_model("hiera_nano")
    for bad in (torch.randn(3, 64, 64), torch.randn(1, 1, 64, 64), torch.randn(1, 3, 64, 80), torch.randn(1, 3, 60, 60)):
        with pytest.raises(ValueError):
            model(bad)
    with pytest.raises(ValueError, match="multiple of 32"):
        bettervit.create_model("hiera_tiny_224", img_size=100)
    with pytest.raises(ValueError):
        bettervit.create_model("hiera_tiny_224", mask_unit_size=4)
    with pytest.raises(ValueError, match="unknown option"):
        bettervit.create_model("hiera_tiny_224", window=7)


def test_window_max_matches_amax_values_and_gradients_with_ties():
    from bettervit.models.hiera import window_max

    x = torch.randn(2, 3, 4, 5, 6)
    x[0, 0, :, 0, 0] = 1.5  # a four-way tie: amax splits the gradient evenly
    x[1, 2, 1:3, 4, 5] = 9.0  # a two-way tie
    g = torch.randn(2, 3, 5, 6)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    torch.testing.assert_close(window_max(a, 2), b.amax(2), rtol=0, atol=0)
    window_max(a, 2).backward(g)
    b.amax(2).backward(g)
    torch.testing.assert_close(a.grad, b.grad)
    assert a.grad[0, 0, :, 0, 0].tolist() == [g[0, 0, 0, 0].item() / 4] * 4
