"""EVA-02: golden parity with timm (every variant, other resolutions), checkpoint formats, the model API, training
behaviour and bad input."""
from __future__ import annotations

import copy

import pytest
import torch

import bettervit
from bettervit import weights
from bettervit.models.eva import rope_angles, rope_tables, rotate
from golden_util import GOLDEN, golden_input, read_fixture
from fill import fill_value

FIXTURES = GOLDEN / "eva02"
NAMES = ["eva02_tiny_patch14_224", "eva02_small_patch14_224", "eva02_base_patch14_224", "eva02_large_patch14_224",
         "eva02_tiny_patch14_336", "eva02_small_patch14_336", "eva02_base_patch14_448", "eva02_large_patch14_448"]
# millions of parameters, as timm counts them (and the papers report)
PARAMS_M = dict(zip(NAMES, [5.50, 21.62, 85.76, 303.27, 5.76, 22.13, 87.12, 305.08]))
TOL = 1e-4


def test_every_variant_is_registered_with_a_fixture():
    assert set(bettervit.list_models("eva02_*")) >= set(NAMES)
    assert {p.stem for p in FIXTURES.glob("eva02_*_patch14_???.safetensors")} == set(NAMES)


def _fill(shapes: dict, cache: dict) -> dict:
    """The fill rule, sharing tensors between variants whose keys and shapes agree (224 trunk vs 336/448 model)."""
    out = {}
    for k, s in shapes.items():
        key = (k, tuple(s))
        if key not in cache:
            cache[key] = fill_value(k, tuple(s))
        out[k] = cache[key]
    return out


def _check_fixture(name: str, cache: dict) -> None:
    ref, shapes, meta = read_fixture(FIXTURES / f"{name}.safetensors")
    model = bettervit.create_model(name).eval()
    weights.load_into(model, _fill(shapes, cache), source=f"timm {name}")
    x = golden_input(tuple(meta["input"]))
    with torch.inference_mode():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        out = model.forward_head(feats)
    assert (feats[:, :: meta["token_step"]] - ref["tokens"]).abs().max().item() <= TOL
    assert (pooled - ref["pooled"]).abs().max().item() <= TOL
    if "logits" in ref:
        assert out.shape == (1, 1000)
        assert torch.isfinite(out).all()
        assert (out - ref["logits"]).abs().max().item() <= TOL
    else:  # headless MIM trunk: forward returns the pooled features
        assert torch.equal(out, pooled)


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_golden_parity_with_timm(size):
    """timm checkpoints (deterministic fill) give timm's tokens, pooled features and logits (max abs diff <= 1e-4),
    for the MIM 224 trunk and the fine-tuned classifier of each size (the pair shares the fill of common keys)."""
    cache: dict = {}
    for name in NAMES:
        if f"_{size}_" in name:
            _check_fixture(name, cache)


def test_other_resolutions_match_timm_dynamic_img_size():
    """224 weights at 336, 448 and 224x336: RoPE and position embedding for the new grid equal timm's
    dynamic_img_size=True; forward_intermediates equal timm's block outputs."""
    ref, shapes, meta = read_fixture(FIXTURES / "eva02_tiny_patch14_224_dynamic.safetensors")
    model = bettervit.create_model("eva02_tiny_patch14_224").eval()
    weights.load_into(model, _fill(shapes, {}))
    with torch.inference_mode():
        for h, w in [(336, 336), (448, 448), (224, 336)]:
            feats = model.forward_features(golden_input((1, 3, h, w)))
            assert feats.shape == (1, 1 + (h // 14) * (w // 14), 192)
            assert torch.isfinite(feats).all()
            assert (feats[:, :: meta["token_step"]] - ref[f"tokens_{h}x{w}"]).abs().max().item() <= TOL
            pooled = model.forward_head(feats, pre_logits=True)
            assert (pooled - ref[f"pooled_{h}x{w}"]).abs().max().item() <= TOL
        maps = model.forward_intermediates(golden_input((1, 3, 224, 224)), indices=[2, 5, 8, 11],
                                           intermediates_only=True)
    assert len(maps) == 4
    for i, f in zip([2, 5, 8, 11], maps):
        assert f.shape == (1, 192, 16, 16)
        assert (f[:, :8] - ref[f"block{i}"]).abs().max().item() <= TOL


def test_rope_and_pos_embed_are_cached_per_grid():
    model = bettervit.create_model("eva02_tiny_patch14_224", depth=1).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 56, 56))
        model(torch.randn(1, 3, 56, 84))
        model(torch.randn(2, 3, 56, 56))
    grids = {k[0] for k in model._rope_cache}
    assert grids == {(4, 4), (4, 6)}
    assert {k[0] for k in model._pos_cache} == {(4, 4), (4, 6)}
    cos, sin = model.rope((4, 4), torch.device("cpu"), torch.float32)
    assert cos.shape == sin.shape == (1 + 16, 64) and cos.dtype == torch.float32
    assert torch.equal(cos[0], torch.ones(64)) and torch.equal(sin[0], torch.zeros(64))  # class token not rotated
    torch.testing.assert_close(cos ** 2 + sin ** 2, torch.ones(17, 64))  # rotations only
    # a learned position embedding update invalidates the resized copy
    with torch.no_grad():
        before = model(torch.ones(1, 3, 56, 56))
        model.pos_embed.add_(1.0)
        after = model(torch.ones(1, 3, 56, 56))
    assert not torch.allclose(before, after)


def test_rope_rescales_onto_reference_grid():
    """Positions i/h*16: the last row of a 24-row grid has the angle of row 15.33 of the 16-row reference."""
    r16 = rope_angles((16, 16), 64)
    r32 = rope_angles((32, 32), 64)
    torch.testing.assert_close(r32[4 * 32 + 4], r16[2 * 16 + 2])  # (4, 4) of 32 == (2, 2) of 16
    cos, sin = rope_tables((16, 16), 64)
    torch.testing.assert_close(cos[1:, 0::2], r16.cos())
    torch.testing.assert_close(sin[1:, 1::2], r16.sin())


def test_rotate_is_the_pairwise_rotation():
    """Channel pair (2j, 2j+1) = (a, b) -> (a cos t - b sin t, b cos t + a sin t); bf16 rotates through float32."""
    t = torch.rand(5, 1, 4) * 6.0  # (N, heads, hd/2) angles
    x = torch.randn(2, 5, 3, 8)  # (B, N, heads, hd)
    a, b = x[..., 0::2], x[..., 1::2]
    want = torch.stack([a * t.cos() - b * t.sin(), b * t.cos() + a * t.sin()], dim=-1).flatten(-2)
    rope = (t.cos().repeat_interleave(2, -1), (t.sin().unsqueeze(-1) * torch.tensor([-1.0, 1.0])).flatten(-2))
    torch.testing.assert_close(rotate(x, rope), want)
    out = rotate(x.bfloat16(), rope)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, atol=0.05, rtol=0.02)


def _official(sd: dict, mim: bool = False, separate: bool = False) -> dict:
    """timm keys -> the official EVA-02 (baaivision/EVA asuka) key names, plus its RoPE buffers."""
    out = {}
    for k, v in sd.items():
        k = (k.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.").replace("mlp.fc1.", "mlp.w12.")
             .replace("mlp.fc2.", "mlp.w3.").replace("mlp.norm.", "mlp.ffn_ln."))
        if separate:
            k = k.replace("attn.q_proj.bias", "attn.q_bias").replace("attn.v_proj.bias", "attn.v_bias")
        if mim and k.startswith("fc_norm."):
            k = "norm." + k[len("fc_norm."):]
        out[k] = v
    n = 16 * 16
    out["rope.freqs_cos"] = torch.randn(n, 64)
    out["rope.freqs_sin"] = torch.randn(n, 64)
    out["blocks.0.attn.rope.freqs_cos"] = out["rope.freqs_cos"]
    if mim:
        out["mask_token"] = torch.randn(1, 1, out["cls_token"].shape[-1])
        out["lm_head.weight"] = torch.randn(1024, out["cls_token"].shape[-1])
        out["lm_head.bias"] = torch.randn(1024)
    return {"model": out}


def test_official_checkpoints_load_to_identical_outputs(tmp_path):
    """Official-format fine-tuned (packed SwiGLU) and MIM checkpoints, written as .pth, give the timm fixtures'
    outputs through create_model(pretrained=path)."""
    cache: dict = {}
    for name, mim in [("eva02_tiny_patch14_336", False), ("eva02_tiny_patch14_224", True)]:
        ref, shapes, meta = read_fixture(FIXTURES / f"{name}.safetensors")
        path = tmp_path / f"{name}.pth"
        torch.save(_official(_fill(shapes, cache), mim=mim), path)
        model = bettervit.create_model(name, pretrained=str(path)).eval()
        with torch.inference_mode():
            pooled = model.forward_head(model.forward_features(golden_input(tuple(meta["input"]))), pre_logits=True)
        assert (pooled - ref["pooled"]).abs().max().item() <= TOL


def test_official_separate_qkv_subln_checkpoint(tmp_path):
    """Base/Large official names (q_bias/v_bias over q_proj/k_proj/v_proj, w1/w2/ffn_ln/w3) map onto ours."""
    model = bettervit.create_model("eva02_base_patch14_448", depth=2, img_size=112).eval()
    sd = {k: fill_value(k, tuple(v.shape)) for k, v in model.state_dict().items()}
    official = _official(sd, separate=True)["model"]
    assert "blocks.0.attn.q_bias" in official and "blocks.1.mlp.ffn_ln.weight" in official
    torch.save(official, tmp_path / "b.pth")
    loaded = bettervit.create_model("eva02_base_patch14_448", depth=2, img_size=112, pretrained=str(tmp_path / "b.pth"))
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_mim_trunk_checkpoint_fine_tunes_at_other_size(tmp_path):
    """A 224 headless trunk checkpoint loads into a 336 classifier: pos_embed resized (bicubic), head fresh."""
    trunk = bettervit.create_model("eva02_tiny_patch14_224", depth=2)
    torch.save(trunk.state_dict(), tmp_path / "t.pth")
    model = bettervit.create_model("eva02_tiny_patch14_336", depth=2, num_classes=7, pretrained=str(tmp_path / "t.pth"))
    assert model.pos_embed.shape == (1, 1 + 24 * 24, 192)
    torch.testing.assert_close(model.pos_embed[:, 0], trunk.pos_embed[:, 0])
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, trunk.blocks[1].mlp.fc2.weight)
    assert model(torch.randn(1, 3, 336, 336)).shape == (1, 7)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts(name):
    with torch.device("meta"):
        model = bettervit.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == PARAMS_M[name]


def test_architecture_facts():
    with torch.device("meta"):
        tiny, base = bettervit.create_model("eva02_tiny_patch14_336"), bettervit.create_model("eva02_base_patch14_448")
    blk = tiny.blocks[0]
    assert blk.mlp.fc1.out_features == 2 * 512 and blk.attn.qkv.bias is None  # packed SwiGLU, int(192*8/3)=512
    assert blk.norm1.eps == 1e-6
    b = base.blocks[0]
    assert b.mlp.fc1_g.out_features == 2048 and b.mlp.norm.normalized_shape == (2048,)  # sub-LN
    assert b.attn.k_proj.bias is None and b.attn.q_proj.bias is not None and b.attn.v_proj.bias is not None
    assert isinstance(tiny.norm, torch.nn.Identity)  # avg pool + fc_norm, no final token norm


def test_every_parameter_gets_a_gradient():
    for name in ["eva02_tiny_patch14_336", "eva02_base_patch14_448"]:
        model = bettervit.create_model(name, depth=2, embed_dim=64, num_heads=2, num_classes=5, drop_path_rate=0.1)
        model.train()(torch.randn(2, 3, 56, 70)).logsumexp(-1).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing


def test_grad_checkpointing_gives_identical_outputs_and_grads():
    model = bettervit.create_model("eva02_tiny_patch14_224", depth=3, num_classes=4).train()
    x = torch.randn(2, 3, 42, 56)
    ref_out = model(x)
    ref_out.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    assert torch.equal(out, ref_out)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip(tmp_path):
    model = bettervit.create_model("eva02_small_patch14_336", depth=2, num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / "m.pth")
    other = bettervit.create_model("eva02_small_patch14_336", depth=2, num_classes=3, pretrained=str(tmp_path / "m.pth"))
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(model(x), other.eval()(x))
    assert "k_bias" not in " ".join(model.state_dict())  # derived buffers are not saved


def test_tables_cached_under_inference_mode_serve_training():
    model = bettervit.create_model("eva02_tiny_patch14_224", depth=1)
    x = torch.randn(1, 3, 28, 28)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()  # the cached RoPE tables must not be inference tensors
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_forward_intermediates_chosen_blocks():
    model = bettervit.create_model("eva02_tiny_patch14_224", depth=4).eval()
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[1, -1])
        last = model.forward_features(x)
        two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 192, 4, 6)] * 2
    torch.testing.assert_close(final, last)
    torch.testing.assert_close(maps[1], last[:, 1:].transpose(1, 2).reshape(2, 192, 4, 6))
    torch.testing.assert_close(two[1], maps[1])
    assert len(model.forward_intermediates(x, intermediates_only=True)) == 4  # None = every block


def test_api_helpers():
    model = bettervit.create_model("eva02_tiny_patch14_336", depth=3)
    assert model.config.depth == 3 and model.config.img_size == 336
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    ids = model.param_layer_ids()
    assert ids["cls_token"] == 0 and ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.2.mlp.fc2.weight"] == 3 and ids["head.weight"] == 4 == model.num_layer_ids() - 1
    model.reset_classifier(10)
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 10) and model.config.num_classes == 10
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 192)
    entry = bettervit.factory.get_entry("eva02_base_patch14_448")
    assert entry.weights == "timm/eva02_base_patch14_448.mim_in22k_ft_in22k_in1k"


@pytest.mark.parametrize(
    "shape, match",
    [((3, 224, 224), "4-D"), ((1, 1, 224, 224), "channels"), ((1, 3, 224, 230), "multiples of 14")],
)
def test_bad_input_raises_value_error(shape, match):
    model = bettervit.create_model("eva02_tiny_patch14_224", depth=1)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


def test_bad_arguments_raise_value_error():
    model = bettervit.create_model("eva02_tiny_patch14_224", depth=2)
    x = torch.randn(1, 3, 28, 28)
    with pytest.raises(ValueError, match="feature index"):
        model.forward_intermediates(x, indices=[5])
    with pytest.raises(ValueError, match="last-n feature count"):
        model.forward_intermediates(x, indices=3)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="mask must have shape"):
        model.forward_features(x, mask=torch.zeros(1, 5, dtype=torch.bool), mask_token=torch.zeros(1, 1, 192))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        bettervit.create_model("eva02_tiny_patch14_224", img_size=230)
    with pytest.raises(ValueError, match="does not fit"):
        weights.load_into(model, {"pos_embed": torch.zeros(1, 257, 192)})


def test_deepcopy_and_half_precision_tables():
    model = bettervit.create_model("eva02_tiny_patch14_224", depth=1).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 28, 28))
        m2 = copy.deepcopy(model).to(torch.bfloat16)
        y = m2(torch.randn(1, 3, 28, 28, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_packed_swiglu_gradient_matches_autograd():
    from bettervit.models.eva import _PackedSwiGLU

    y = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_PackedSwiGLU.apply, (y,))
    g = torch.randn(2, 5, 8, dtype=torch.float64)
    gate, value = y.chunk(2, dim=-1)
    (ref,) = torch.autograd.grad(torch.nn.functional.silu(gate) * value, y, g)
    (got,) = torch.autograd.grad(_PackedSwiGLU.apply(y), y, g)
    torch.testing.assert_close(got, ref)
