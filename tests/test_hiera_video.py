"""Hiera for video (the official hiera_*_16x224 Kinetics models) and the video MAE: parity with the official
hiera-transformer package, key names / shapes of the full-size models, token order, run-time sizes, the timm-style
API on clips, bad input. Fixtures: scripts/golden_hiera_video.py."""
from __future__ import annotations

import json

import pytest
import torch

import bettervit
from bettervit import weights
from bettervit.models.hiera import Hiera
from bettervit.pretrain.mae import MaskedAutoencoderHiera, reconstruct_images
from golden_util import GOLDEN, golden_input, read_fixture, reference_checkpoint

HIERA = GOLDEN / "hiera"
VIDEO_SIZES = ("base", "base_plus", "large", "huge")


def _official_classifier(tag: str):
    ref, shapes, meta = read_fixture(HIERA / f"official_hiera_base_16x224_at{tag}.safetensors")
    return ref, shapes, meta


# --- parity with the official package ---------------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["4x64x64", "8x64x96"])
def test_golden_parity_with_official_video_classifier(tag, tmp_path):
    """An official-format file ({"model_state": ...}, norm. / head.projection. / pos_embed_spatial /
    pos_embed_temporal) gives the official logits and stage maps (<= 1e-4); 8x64x96 is non-square with 4 temporal
    tokens."""
    ref, shapes, meta = _official_classifier(tag)
    assert {"pos_embed_spatial", "pos_embed_temporal", "head.projection.weight", "norm.weight"} <= set(shapes)
    path = tmp_path / "hiera_base_16x224.pth"
    torch.save({"model_state": reference_checkpoint(shapes)}, path)
    model = bettervit.create_model("hiera_base_16x224", pretrained=str(path), img_size=tuple(meta["img_size"]),
                                   num_frames=meta["num_frames"]).eval()
    x = golden_input(tuple(meta["input"]))
    with torch.inference_mode():
        logits = model(x)
        final, maps = model.forward_intermediates(x, output_fmt="NTHWC")
    assert logits.shape == ref["logits"].shape == (1, 400)
    assert (logits - ref["logits"]).abs().max().item() <= 1e-4
    for i, m in enumerate(maps):  # official return_intermediates layout (B, t, h, w, C)
        assert m[..., :4].shape == ref[f"stage{i}"].shape
        assert (m[..., :4] - ref[f"stage{i}"]).abs().max().item() <= 1e-4
    # after the last pooling the tokens are raster (t, h/32, w/32): forward_features is the last map, flattened
    B, t, h, w, C = maps[-1].shape
    torch.testing.assert_close(final, maps[-1].reshape(B, t * h * w, C), rtol=0, atol=0)
    # tokens returned before every level has pooled come in the official order (levels first, units (t, u, v) last)
    with torch.inference_mode():
        early, _ = model.forward_intermediates(x, indices=[0], stop_early=True)
        masked = model.forward_features(x, mask=ref["mask"].bool())
    assert (early[..., :4] - ref["tokens_stage0"]).abs().max().item() <= 1e-4
    assert (masked[..., :4] - ref["masked_final"]).abs().max().item() <= 1e-4


def test_loss_parity_with_official_video_mae(tmp_path):
    """The official video MAE (mae_hiera_base_16x224 at 8x64x64): same weights and mask -> the official loss,
    predictions and time-strided targets (<= 1e-4)."""
    ref, shapes, meta = read_fixture(HIERA / "official_mae_hiera_base_16x224_at8x64x64.safetensors")
    path = tmp_path / "mae.pth"
    sd = reference_checkpoint(shapes)
    torch.save({"model_state": sd}, path)
    model = bettervit.create_model("mae_hiera_base_16x224", pretrained=str(path), img_size=tuple(meta["img_size"]),
                                   num_frames=meta["num_frames"]).eval()
    mask = ref["mask"].bool()
    assert mask.shape == (2, 16) and (mask.sum(1) == 4).all()
    with torch.no_grad():
        out = model(golden_input(tuple(meta["input"])), mask=mask)
    assert abs(out.loss.item() - ref["loss"].item()) <= 1e-4
    # prediction tokens: (t, h/16, w/16) = (4, 4, 4); a mask unit is 2x2 of them
    masked = ~mask.view(2, 4, 2, 1, 2, 1).expand(2, 4, 2, 2, 2, 2).reshape(2, 64)
    assert (out.pred[masked][::8] - ref["pred_rows"]).abs().max().item() <= 1e-4
    assert (out.target[masked][::8] - ref["label_rows"]).abs().max().item() <= 1e-4

    # the same official MAE file initialises a video classifier's encoder (decoder dropped, encoder_norm -> head.norm)
    clf = bettervit.create_model("hiera_base_16x224", img_size=tuple(meta["img_size"]), num_frames=meta["num_frames"])
    weights.load_into(clf, sd, source="official video MAE")
    assert torch.equal(clf.head.norm.weight, sd["encoder_norm.weight"])
    assert torch.equal(clf.pos_embed_temporal, sd["pos_embed_temporal"])


def test_every_video_variant_matches_official_keys_and_shapes():
    ref = json.loads((HIERA / "video_shapes.json").read_text())
    names = {f"hiera_{s}_16x224" for s in VIDEO_SIZES} | {f"mae_hiera_{s}_16x224" for s in VIDEO_SIZES}
    assert set(bettervit.list_models("*_16x224")) == set(ref) == names
    for name, shapes in ref.items():
        with torch.device("meta"):
            model = bettervit.create_model(name)
        own = {k: list(v.shape) for k, v in model.state_dict().items()}
        sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        # our keys after the official -> ours key map (norm. -> head.norm., head.projection. -> head.fc.)
        assert {k: list(v.shape) for k, v in model.convert_checkpoint(sd).items()} == own, name


# parameters and FLOPs (one forward, batch 1, 16x224x224, multiply-add = 2) of the official hiera-transformer
# constructors hiera_*_16x224, counted with torch.utils.flop_counter on the meta device (as bettervit.bench does).
# The paper's table 3 rounds them to 51 / 70 / 214 / 673 M and 102 / 133 / 413 / 1159 G(MAC)s.
OFFICIAL_COUNTS = dict(base=(51092560, 203451850752), base_plus=(69392240, 264604856320),
                       large=(213091600, 824260939776), huge=(671627664, 2315592728576))


# the official mae_hiera_*_16x224 likewise, one pretraining forward at mask ratio 0.9 counted on the CPU (seed 0,
# SDPA's math backend), as bettervit.models.facts.count_model counts MAE models
OFFICIAL_MAE_COUNTS = dict(base=(79367104, 142686281728), base_plus=(98320352, 150098292736),
                           large=(243621760, 202903367680), huge=(710861568, 372675641344))


@pytest.mark.parametrize("size", VIDEO_SIZES)
def test_video_parameter_and_flop_counts(size):
    """Our models count what the official ones do, and `bettervit models` (bettervit/_counts.py) shows it."""
    from bettervit._counts import COUNTS
    from bettervit.models.facts import count_model

    c = count_model(f"hiera_{size}_16x224")
    assert (c["params"], c["flops"]) == OFFICIAL_COUNTS[size]
    assert COUNTS[f"hiera_{size}_16x224"] == ((16, 224, 224), *OFFICIAL_COUNTS[size])
    assert COUNTS[f"mae_hiera_{size}_16x224"] == ((16, 224, 224), *OFFICIAL_MAE_COUNTS[size])


# --- token order, sizes, API ------------------------------------------------------------------------------------
def test_video_token_order_is_frame_major_and_units_contiguous():
    """The first 64 tokens of a clip are the top-left mask unit of the first temporal token; the next frame's
    units follow that frame's."""
    model = bettervit.create_model("hiera_nano_video").eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        tokens, (t, h, w) = model.embed(x)
        conv = model.patch_embed(x)  # (1, C, 4, 16, 16)
    assert (t, h, w) == (4, 16, 16) and tokens.shape == (1, 4 * 256, 32)
    pos = model.pos_embed_spatial.view(16, 16, 32) + model.pos_embed_temporal.view(4, 1, 1, 32)[1]  # frame 1
    unit = (conv[0, :, 1, :8, 8:].permute(1, 2, 0) + pos[:8, 8:]).reshape(64, 32)  # frame 1, unit (0, 1)
    got = tokens[0, 256 + 64 : 256 + 128]  # frame 1 starts at 256 tokens; its unit (0, 1) is the second run
    torch.testing.assert_close(got.sort(0).values, unit.sort(0).values)


@pytest.mark.parametrize("T,H,W", [(8, 64, 64), (4, 96, 64), (12, 32, 64)])
def test_runtime_sizes(T, H, W):
    """Any frame count that is a multiple of 2 and sides that are multiples of 32 run; maps keep t = T / 2."""
    model = bettervit.create_model("hiera_nano_video", num_classes=5).eval()
    x = torch.randn(1, 3, T, H, W)
    with torch.no_grad():
        assert model(x).shape == (1, 5)
        maps = model.forward_intermediates(x, intermediates_only=True)  # NCTHW
    assert [tuple(m.shape[2:]) for m in maps] == [(T // 2, H // s, W // s) for s in (4, 8, 16, 32)]
    assert [m.shape[1] for m in maps] == [32, 64, 128, 256]


def test_temporal_pos_embed_interpolates():
    model = bettervit.create_model("hiera_nano_video")
    with torch.no_grad():
        model.pos_embed_temporal.copy_(torch.linspace(0, 3, 4).view(1, 4, 1).expand(1, 4, 32))
    assert torch.equal(model.pos_embed_temporal_for(4), model.pos_embed_temporal)
    longer = model.pos_embed_temporal_for(8)[0, :, 0]
    assert longer.shape == (8,) and torch.all(longer[1:] >= longer[:-1]) and longer[0] == 0 and longer[-1] == 3


def test_features_only_and_formats():
    feat = bettervit.create_model("hiera_nano_video", features_only=True, out_indices=(1, 3))
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        maps = feat(x)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 4, 8, 8), (2, 256, 4, 2, 2)]
    assert feat.feature_info.channels() == [64, 256] and feat.feature_info.reduction() == [8, 32]
    model = bettervit.create_model("hiera_nano_video").eval()
    with torch.no_grad():
        a = model.forward_intermediates(x, indices=[0], output_fmt="NCTHW", intermediates_only=True)[0]
        b = model.forward_intermediates(x, indices=[0], output_fmt="NTHWC", intermediates_only=True)[0]
        mask = torch.zeros(2, 16, dtype=torch.bool)
        mask[:, ::4] = True
        c = model.forward_intermediates(x, mask=mask, indices=[0], output_fmt="NTHWC", intermediates_only=True)[0]
    assert torch.equal(a, b.permute(0, 4, 1, 2, 3))
    assert c.shape == (2, 4, 1, 8, 8, 32)  # per kept unit, as the official Reroll
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NCL")


def test_pretrained_cfg_and_official_url():
    cfg = bettervit.get_pretrained_cfg("hiera_base_16x224")
    assert cfg["input_size"] == [3, 16, 224, 224] and cfg["num_classes"] == 400
    assert cfg["url"] == "https://dl.fbaipublicfiles.com/hiera/hiera_base_16x224.pth"
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert bettervit.get_pretrained_cfg("mae_hiera_huge_16x224")["url"].endswith("/mae_hiera_huge_16x224.pth")
    with torch.device("meta"):
        model = bettervit.create_model("hiera_large_16x224", num_frames=8)
    assert model.pretrained_cfg["input_size"] == [3, 8, 224, 224]
    assert model.no_weight_decay() == {"pos_embed_spatial", "pos_embed_temporal"}
    ids = model.param_layer_ids()
    assert ids["pos_embed_spatial"] == ids["pos_embed_temporal"] == ids["patch_embed.proj.weight"] == 0
    with pytest.raises(ValueError, match="fbaipublicfiles"):
        bettervit.create_model("hiera_base_16x224", pretrained=True)


def test_bad_input():
    video = bettervit.create_model("hiera_nano_video")
    image = bettervit.create_model("hiera_nano")
    with pytest.raises(ValueError, match="video model"):
        video(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="image model"):
        image(torch.randn(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match="multiple of 2"):
        video(torch.randn(1, 3, 5, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        video(torch.randn(1, 3, 8, 64, 48))
    with pytest.raises(ValueError, match="num_frames"):
        bettervit.create_model("hiera_nano_video", num_frames=7)
    mae = bettervit.create_model("mae_hiera_nano_video")
    with pytest.raises(ValueError, match="built for 8 frames"):
        mae(torch.randn(1, 3, 4, 64, 64))


def test_every_parameter_gets_a_gradient():
    model = bettervit.create_model("hiera_nano_video", num_classes=3).train()
    model(torch.randn(2, 3, 4, 64, 64)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# --- video MAE --------------------------------------------------------------------------------------------------
def test_video_mae_targets_masks_and_reconstruction():
    model = bettervit.create_model("mae_hiera_nano_video")
    assert isinstance(model, MaskedAutoencoderHiera) and model.num_units == 16 and model.config.mask_ratio == 0.75
    x = torch.rand(2, 3, 8, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out.mask.shape == (2, 16) and (out.mask.sum(1) == 4).all()
    assert out.pred.shape == out.target.shape == (2, 4 * 4 * 4, 16 * 16 * 3)
    # targets: the first frame of each 2-frame slot, patches flattened (y, x, c) and normalised per patch
    patch = x[0, :, 2, 16:32, 48:64].permute(1, 2, 0).reshape(-1)  # frame 2 = temporal token 1, patch (1, 3)
    norm = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
    torch.testing.assert_close(out.target[0, 16 + 1 * 4 + 3], norm)
    with torch.no_grad():
        rec = reconstruct_images(model, x, out._replace(pred=out.target))
    torch.testing.assert_close(rec, x[:, :, ::2], atol=1e-4, rtol=0)  # a perfect prediction gives the frames back


def test_video_masked_pixels_do_not_reach_the_encoder():
    model = bettervit.create_model("mae_hiera_nano_video").eval()
    x = torch.randn(1, 3, 8, 64, 64)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 5, 10, 15]] = True
    # units (t, u, v): a unit covers frames 2t, 2t+1 and a 32x32 square
    pix = mask.view(1, 1, 4, 1, 2, 1, 2, 1).expand(1, 1, 4, 2, 2, 32, 2, 32).reshape(1, 1, 8, 64, 64)
    y = torch.where(pix, x, torch.randn_like(x) * 10)
    with torch.no_grad():
        a, b = model.forward_encoder(x, mask), model.forward_encoder(y, mask)
        c = model.forward_encoder(torch.where(pix, torch.randn_like(x), x), mask)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_video_mae_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = bettervit.create_model("mae_hiera_nano_video", num_frames=4).train()
    x = torch.randn(2, 1, 1, 8, 8).repeat_interleave(8, -1).repeat_interleave(8, -2).expand(2, 3, 4, 64, 64)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, [0, 3]] = True
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = model(x.contiguous(), mask=mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


def test_optimize_pass_runs_video():
    """bettervit.optimize's CPU inference blocks take video tokens unchanged (same unit-major layout)."""
    model = bettervit.create_model("hiera_nano_video", num_classes=7).eval()
    fast = bettervit.optimize(model)
    x = torch.randn(2, 3, 4, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)


def test_video_mae_checkpoint_loads_at_other_clip_sizes():
    """A video MAE checkpoint (encoder tables and the decoder's joint (t, h, w) table) loads strictly into a model
    built for other frame counts / sizes; the decoder table is resampled as the encoder's (spatial bicubic per
    temporal slice, temporal linear per position), and left untouched at the same size."""
    import torch.nn.functional as F

    from bettervit import create_model

    torch.manual_seed(0)
    src = create_model("mae_hiera_nano_video")  # 8 frames, 64 px: decoder grid 4 x 4 x 4
    sd = src.state_dict()
    same = create_model("mae_hiera_nano_video")
    assert torch.equal(same.convert_checkpoint(sd)["decoder_pos_embed"], sd["decoder_pos_embed"])
    for frames, img in ((4, 64), (16, 96)):
        dst = create_model("mae_hiera_nano_video", num_frames=frames, img_size=img)
        dst.load_state_dict(dst.convert_checkpoint(sd), strict=True)
        t, (h, w) = dst.frames_t, dst.final_grid
        assert dst.decoder_pos_embed.shape == (1, t * h * w, sd["decoder_pos_embed"].shape[-1])
    # temporal only (same spatial grid): each spatial position's sequence is linearly interpolated over time
    dst = create_model("mae_hiera_nano_video", num_frames=4)
    got = dst.convert_checkpoint(sd)["decoder_pos_embed"].view(2, 16, -1)  # (t, h*w, C)
    old = sd["decoder_pos_embed"].view(4, 16, -1)
    want = F.interpolate(old.permute(1, 2, 0), size=2, mode="linear", align_corners=False).permute(2, 0, 1)
    torch.testing.assert_close(got, want)
