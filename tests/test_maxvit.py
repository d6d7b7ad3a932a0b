"""MaxViT: golden parity with timm, the model API, training behaviour and bad input."""
from __future__ import annotations

import copy

import pytest
import torch

import bettervit
from bettervit import weights
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint
from helpers import slow_cases

FIXTURES = sorted((GOLDEN / "maxvit").glob("*.safetensors"))
PARAMS_M = {"tiny": 30.92, "small": 68.93, "base": 119.47, "large": 211.79}  # as timm counts them, at 224


def test_every_variant_has_a_fixture():
    names = {p.stem for p in FIXTURES}
    assert names == set(bettervit.list_models("maxvit_*_tf_*"))
    assert len(names) == 15


@pytest.mark.parametrize("path", slow_cases(FIXTURES, {
    "maxvit_small_tf_512", "maxvit_base_tf_384", "maxvit_base_tf_512", "maxvit_large_tf_224", "maxvit_large_tf_384",
    "maxvit_large_tf_512", "maxvit_xlarge_tf_224", "maxvit_xlarge_tf_384", "maxvit_xlarge_tf_512"}, key=lambda p: p.stem),
    ids=lambda p: p.stem)
def test_golden_parity_with_timm(path):
    """A timm checkpoint of the same name gives timm's logits (fp32, max abs diff <= 1e-4)."""
    ref, shapes, meta = read_fixture(path)
    with torch.device("meta"):  # skip random init: every tensor comes from the checkpoint
        model = bettervit.create_model(path.stem)
    model.to_empty(device="cpu").eval()
    weights.load_into(model, reference_checkpoint(shapes), source="timm fixture")
    x = golden_input(tuple(meta["input"]))
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape == ref["logits"].shape
    assert torch.isfinite(logits).all()
    assert (logits - ref["logits"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size", list(PARAMS_M))
def test_parameter_counts(size):
    with torch.device("meta"):
        model = bettervit.create_model(f"maxvit_{size}_tf_224")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == PARAMS_M[size]


def test_every_parameter_gets_a_gradient():
    model = bettervit.create_model("maxvit_nano", num_classes=5, drop_path_rate=0.1).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_grad_checkpointing_is_identical():
    model = bettervit.create_model("maxvit_nano").train()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    ref.sum().backward()
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g_ref[n], msg=n)


def test_state_dict_round_trip(tmp_path):
    model = bettervit.create_model("maxvit_nano").eval()
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    clone = bettervit.create_model("maxvit_nano", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


def test_api_surface():
    model = bettervit.create_model("maxvit_nano", num_classes=7)
    assert model.config.num_classes == 7 and model.config.window == 2
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 256, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    ids = model.param_layer_ids()
    assert set(ids.values()) == set(range(model.num_layer_ids()))
    assert ids["stem.conv1.weight"] == 0 and ids["head.fc.weight"] == model.num_layer_ids() - 1
    assert all(n.endswith("relative_position_bias_table") for n in model.no_weight_decay())
    assert len(model.no_weight_decay()) == 2 * sum(model.config.depths)


def test_other_img_size_resizes_bias_tables(tmp_path):
    src = bettervit.create_model("maxvit_nano")  # 64 px, window 2
    path = tmp_path / "nano.pth"
    torch.save(src.state_dict(), path)
    model = bettervit.create_model("maxvit_nano", img_size=96, pretrained=str(path))  # window 3
    t = model.stages[0].blocks[0].attn_block.attn.rel_pos.relative_position_bias_table
    assert t.shape[-1] == 5
    assert torch.isfinite(model(torch.randn(1, 3, 96, 96))).all()


def test_other_num_classes_drops_head(tmp_path):
    src = bettervit.create_model("maxvit_nano")
    path = tmp_path / "nano.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    model = bettervit.create_model("maxvit_nano", num_classes=4, pretrained=str(path))
    assert model.head.fc.out_features == 4
    torch.testing.assert_close(model.stem.conv1.weight, src.stem.conv1.weight)


def test_bad_input():
    model = bettervit.create_model("maxvit_nano")
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 96, 100))
    with pytest.raises(ValueError, match="multiple of 32"):
        bettervit.create_model("maxvit_nano", img_size=100)
    with pytest.raises(ValueError, match="closest: maxvit_tiny_tf_224"):
        bettervit.create_model("maxvit_tiny_tf_22")
    with pytest.raises(ValueError, match="unknown option"):
        bettervit.create_model("maxvit_nano", windw=3)


def test_strict_loading_names_bad_keys(tmp_path):
    sd = bettervit.create_model("maxvit_nano").state_dict()
    sd.pop("stem.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): stem.conv1.weight.*unexpected 1 key\(s\): extra.weight"):
        bettervit.create_model("maxvit_nano", pretrained=str(path))


def test_training_after_inference_mode():
    """Nothing made under inference_mode (an inference tensor) may leak into autograd afterwards."""
    model = bettervit.create_model("maxvit_nano")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()
    assert model.stages[0].blocks[0].attn_block.attn.rel_pos.relative_position_bias_table.grad is not None


def test_cpu_autocast_inference():
    model = bettervit.create_model("maxvit_nano").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    with torch.no_grad():
        ref = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() < 0.1
