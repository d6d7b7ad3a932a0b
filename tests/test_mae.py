"""MAE-Hiera: loss parity with the official hiera-transformer MAE, checkpoint format, masking and training."""
from __future__ import annotations

import json

import pytest
import torch

import bettervit
from bettervit import weights
from bettervit.pretrain.mae import MAEOutput, MaskedAutoencoderHiera, random_unit_mask, reconstruct_images
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

HIERA = GOLDEN / "hiera"
SIZES = ("tiny", "small", "base", "base_plus", "large", "huge")


def test_every_mae_variant_matches_official_keys_and_shapes():
    ref = json.loads((HIERA / "mae_shapes.json").read_text())
    assert set(bettervit.list_models("mae_hiera_*_224")) == set(ref) == {f"mae_hiera_{s}_224" for s in SIZES}
    for name, shapes in ref.items():
        with torch.device("meta"):
            model = bettervit.create_model(name)
        assert isinstance(model, MaskedAutoencoderHiera)
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes, name


def test_loss_parity_with_official_mae(tmp_path):
    """Same weights (official key names, ``model_state`` wrapper) and same mask -> the official loss, predictions
    and targets (fp32, <= 1e-4)."""
    ref, shapes, meta = read_fixture(HIERA / "official_mae_hiera_tiny_224.safetensors")
    path = tmp_path / "mae_hiera_tiny_224.pth"
    torch.save({"model_state": reference_checkpoint(shapes)}, path)
    model = bettervit.create_model("mae_hiera_tiny_224", pretrained=str(path)).eval()
    mask = ref["mask"].bool()
    assert mask.shape == (2, 49) and (mask.sum(1) == 19).all()
    with torch.no_grad():
        out = model(golden_input(tuple(meta["input"])), mask=mask)
    assert isinstance(out, MAEOutput)
    assert abs(out.loss.item() - ref["loss"].item()) <= 1e-4
    masked = ~out.mask.view(2, 7, 1, 7, 1).expand(2, 7, 2, 7, 2).reshape(2, 196)  # patch level, True = masked
    assert (out.pred[masked][::16] - ref["pred_rows"]).abs().max().item() <= 1e-4
    assert (out.target[masked][::16] - ref["label_rows"]).abs().max().item() <= 1e-4


def test_outputs_and_mask_convention():
    model = bettervit.create_model("mae_hiera_nano")
    x = torch.randn(3, 3, 64, 64)
    out = model(x, mask_ratio=0.5)
    assert out.mask.dtype == torch.bool and out.mask.shape == (3, 4)
    assert (out.mask.sum(1) == 2).all()  # True = visible: int(4 * (1 - 0.5)) kept
    assert out.pred.shape == out.target.shape == (3, 16, 16 * 16 * 3)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    m = random_unit_mask(4, 49, 0.6, generator=torch.Generator().manual_seed(0))
    assert (m.sum(1) == 19).all() and not torch.equal(m[0], m[1])


def test_loss_counts_masked_patches_only():
    model = bettervit.create_model("mae_hiera_nano")
    x = torch.randn(2, 3, 64, 64)
    mask = torch.tensor([[True, False, False, False], [False, True, False, False]])
    with torch.no_grad():
        out = model(x, mask=mask)
        masked = ~mask.view(2, 2, 1, 2, 1).expand(2, 2, 2, 2, 2).reshape(2, 16)
        expect = (out.pred - out.target).pow(2)[masked].mean()
    torch.testing.assert_close(out.loss, expect)
    # targets are each patch's pixels normalised by the patch's own mean and (unbiased) variance
    t = out.target
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 16), atol=1e-3, rtol=0)


def test_masked_pixels_do_not_reach_the_encoder():
    model = bettervit.create_model("mae_hiera_nano").eval()
    x = torch.randn(2, 3, 64, 64)
    mask = random_unit_mask(2, 4, 0.75, generator=torch.Generator().manual_seed(3))
    pix = mask.view(2, 1, 2, 1, 2, 1).expand(2, 1, 2, 32, 2, 32).reshape(2, 1, 64, 64)
    y = torch.where(pix, x, torch.randn_like(x) * 10)  # only masked units' pixels change
    with torch.no_grad():
        a, b = model.forward_encoder(x, mask), model.forward_encoder(y, mask)
        c = model.forward_encoder(torch.where(pix, torch.randn_like(x), x), mask)  # visible pixels do matter
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = bettervit.create_model("mae_hiera_nano").train()
    x = torch.randn(2, 1, 8, 8).repeat_interleave(8, -1).repeat_interleave(8, -2).repeat(1, 3, 1, 1)  # smooth images
    mask = random_unit_mask(2, 4, 0.5, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = model(x, mask=mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_every_parameter_gets_a_gradient():
    model = bettervit.create_model("mae_hiera_nano").train()
    model(torch.randn(2, 3, 64, 64)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_grad_checkpointing_is_identical():
    model = bettervit.create_model("mae_hiera_nano").train()
    x, mask = torch.randn(2, 3, 64, 64), random_unit_mask(2, 4, 0.5)
    a = model(x, mask=mask).loss
    model.set_grad_checkpointing(True)
    b = model(x, mask=mask).loss
    assert torch.equal(a, b)


def test_reconstruct_images():
    model = bettervit.create_model("mae_hiera_nano").eval()
    x = torch.rand(2, 3, 64, 64)
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    with torch.no_grad():
        out = model(x, mask=mask)
        img = reconstruct_images(model, x, out)
    assert img.shape == x.shape
    pix = mask.view(2, 1, 2, 1, 2, 1).expand(2, 3, 2, 32, 2, 32).reshape(2, 3, 64, 64)
    assert torch.equal(img[pix], x[pix])  # visible units are the input
    assert not torch.allclose(img[~pix], x[~pix])
    # a perfect normalised prediction, un-normalised with each original patch's own mean and variance, is the image
    with torch.no_grad():
        rec = reconstruct_images(model, x, out._replace(pred=out.target))
    assert torch.allclose(rec, x, atol=1e-4)


def test_mae_init_official_with_decoder_and_timm_encoder_only(tmp_path):
    """--init continues pretraining from an official MAE file (decoder included) or timm's encoder-only .mae file."""
    from bettervit.pretrain.mae import MAE_ONLY_PREFIXES
    from bettervit.train.config import RunConfig
    from bettervit.train.tasks.mae import build_mae_model

    shapes = {k: tuple(v) for k, v in json.loads((HIERA / "mae_shapes.json").read_text())["mae_hiera_tiny_224"].items()}
    sd = reference_checkpoint(shapes)
    torch.save({"model_state": sd}, tmp_path / "mae_hiera_tiny_224.pth")  # the official file layout
    cfg = RunConfig(task="pretrain", method="mae", model="mae_hiera_tiny_224", init=str(tmp_path / "mae_hiera_tiny_224.pth"))
    model = build_mae_model(cfg, 224)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k  # decoder and fusion heads too
    loss = model(torch.randn(1, 3, 224, 224)).loss
    loss.backward()
    assert torch.isfinite(loss) and model.decoder_pred.weight.grad is not None

    # timm's hiera_tiny_224.mae: the encoder with the MAE encoder norm at head.norm., no decoder
    timm_sd = {("head.norm." + k.removeprefix("encoder_norm.")) if k.startswith("encoder_norm.") else k: v
               for k, v in sd.items() if not k.startswith(MAE_ONLY_PREFIXES)}
    torch.save(timm_sd, tmp_path / "timm_mae.pth")
    fresh_model = build_mae_model(RunConfig(task="pretrain", method="mae", model="mae_hiera_tiny_224",
                                                 init=str(tmp_path / "timm_mae.pth")), 224)
    got = fresh_model.state_dict()
    assert torch.equal(got["encoder_norm.weight"], sd["encoder_norm.weight"])
    assert torch.equal(got["blocks.3.attn.qkv.weight"], sd["blocks.3.attn.qkv.weight"])
    assert not torch.equal(got["decoder_pred.weight"], sd["decoder_pred.weight"])  # fresh decoder

    del timm_sd["blocks.0.norm1.weight"]
    torch.save(timm_sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="blocks.0.norm1.weight"):
        build_mae_model(RunConfig(task="pretrain", method="mae", model="mae_hiera_tiny_224",
                                       init=str(tmp_path / "broken.pth")), 224)


def test_classifier_api_and_bad_input():
    model = bettervit.create_model("mae_hiera_nano")
    assert {"pos_embed", "decoder_pos_embed", "mask_token"} <= model.no_weight_decay()
    assert max(model.param_layer_ids().values()) == model.num_layer_ids() - 1
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="mask_ratio"):
        model(x, mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask"):
        model(x, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="same"):
        model(x, mask=torch.tensor([[True, True, False, False], [True, False, False, False]]))
    with pytest.raises(ValueError):
        model(torch.randn(2, 3, 96, 96))
    with pytest.raises(ValueError):
        model.reset_classifier(10)


def test_official_mae_checkpoint_loads_strictly_and_names_bad_keys(tmp_path):
    _, shapes, _ = read_fixture(HIERA / "official_mae_hiera_tiny_224.safetensors")
    sd = reference_checkpoint(shapes)
    model = bettervit.create_model("mae_hiera_tiny_224")
    weights.load_into(model, sd)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    del sd["mask_token"]
    with pytest.raises(ValueError, match="mask_token"):
        weights.load_into(model, sd)
