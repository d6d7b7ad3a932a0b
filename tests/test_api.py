"""The family-independent parts of timm's model API: create_model's options, pretrained configs, the model list,
stem adaptation for other channel counts, position-embedding resampling, and features_only (values checked against
fixtures timm produced, scripts/golden_api.py); and, over the whole registry at small width (helpers.small_overrides),
the contracts every model keeps: checkpoints round-trip, features_only agrees with feature_info, and the MAE / MIM
pretraining models give a finite loss that reaches every trainable parameter, unchanged by gradient checkpointing.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import bettervit
from bettervit.factory import get_entry, get_pretrained_cfg
from bettervit.layers.pos_embed import resample_abs_pos_embed
from bettervit.models.base import feature_take_indices
from bettervit.pretrain.mim import build_mim
from bettervit.weights import adapt_input_conv
from golden_util import GOLDEN, read_fixture
from helpers import backward_with_saved_count, build_small, is_mae, is_video, small_input, small_overrides

FIX, _, META = read_fixture(GOLDEN / "api" / "shared.safetensors")
MODELS = bettervit.list_models()
CLASSIFIERS = [n for n in MODELS if not is_mae(n)]
MAE = [n for n in MODELS if is_mae(n)]
# MIM students: the plain ViTs (EVA-02, EVA), told apart by their patch size
VITS = [n for n in CLASSIFIERS if hasattr(get_entry(n).config(), "patch_size")]


def test_feature_take_indices_matches_timm():
    for key, (take, last) in META["takes"].items():
        n, idx = json.loads(key)
        assert feature_take_indices(n, idx) == (take, last), key
    with pytest.raises(ValueError, match="out of range"):
        feature_take_indices(4, [4])
    with pytest.raises(ValueError, match="1..4"):
        feature_take_indices(4, 5)


@pytest.mark.parametrize("chans", [1, 2, 4, 5, 7])
def test_adapt_input_conv_matches_timm(chans):
    torch.testing.assert_close(adapt_input_conv(chans, FIX["conv"]), FIX[f"conv_in{chans}"], rtol=0, atol=1e-6)


def test_resample_abs_pos_embed_matches_timm():
    for key, (size, prefix, aa) in META["cases"].items():
        src = FIX["pos"] if prefix else FIX["pos"][:, 1:]
        got = resample_abs_pos_embed(src, size, num_prefix_tokens=prefix, antialias=aa)
        torch.testing.assert_close(got, FIX[f"pos_{key}"], rtol=0, atol=1e-5, msg=key)


def test_model_lists():
    assert bettervit.list_pretrained() == META["pretrained"]
    assert bettervit.list_models("hiera_tiny*", pretrained=True) == ["hiera_tiny_224.mae", "hiera_tiny_224.mae_in1k_ft_in1k"]
    assert "maxvit_nano" in bettervit.list_models("maxvit*") and "maxvit_nano" not in bettervit.list_models(
        "maxvit*", pretrained=True)
    assert bettervit.list_models("eva02_*_patch14_*", module="eva02", exclude_filters="*_224") == [
        f"eva02_{s}" for s in ("base_patch14_448", "large_patch14_448", "small_patch14_336", "tiny_patch14_336")]
    assert bettervit.is_model("maxvit_tiny_tf_224.in1k") and not bettervit.is_model("vit_base_patch16_224")


def test_pretrained_cfg_attached():
    m = bettervit.create_model("maxvit_tiny_tf_384")
    cfg = m.pretrained_cfg
    assert m.default_cfg is cfg
    assert cfg["input_size"] == [3, 384, 384] and cfg["first_conv"] == "stem.conv1" and cfg["classifier"] == "head.fc"
    assert cfg["crop_pct"] == get_pretrained_cfg("maxvit_tiny_tf_384")["crop_pct"] == 1.0
    assert cfg["hf_hub_id"] == "timm/maxvit_tiny_tf_384.in1k"
    with pytest.raises(ValueError, match="no weight tag"):
        bettervit.create_model("hiera_tiny_224.in1k")


def test_create_model_option_errors():
    with pytest.raises(ValueError, match="unknown option"):
        bettervit.create_model("hiera_nano", not_an_option=3)
    with pytest.raises(ValueError, match="output_stride"):
        bettervit.create_model("hiera_nano", output_stride=16)
    with pytest.raises(ValueError, match="features_only"):
        bettervit.create_model("hiera_nano", out_indices=(1, 2))
    with pytest.raises(ValueError, match="unknown model"):
        bettervit.create_model("hiera_tinny_224")
    assert bettervit.create_model("hiera_nano", False, num_classes=None).num_classes == 1000  # positional, as timm


def _save(model: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output on ``x``: logits / features, or an MAE model's loss under a fixed mask."""
    if hasattr(model, "forward_loss"):  # MAE
        mask = model.random_mask(x, model.config.mask_ratio, generator=torch.Generator().manual_seed(0))
        return model(x, mask=mask).loss
    return model(x)


@pytest.mark.parametrize("name", CLASSIFIERS, scope="module")
@pytest.mark.parametrize("chans", [1, 4])
def test_in_chans_adapts_pretrained_stem(tmp_path, name, chans):
    torch.manual_seed(0)
    small = small_overrides(name)
    ref = bettervit.create_model(name, **small)
    path = _save(ref, tmp_path / "rgb.safetensors")
    m = bettervit.create_model(name, pretrained=path, in_chans=chans, **small)
    key = m.pretrained_cfg["first_conv"] + ".weight"
    torch.testing.assert_close(m.state_dict()[key], adapt_input_conv(chans, ref.state_dict()[key]))
    if chans == 1:  # a grey image through the summed kernel = the same image as RGB through the original
        x = torch.rand(2, 1, *ref.pretrained_cfg["input_size"][1:])
        expand = (-1, 3) + (-1,) * (x.ndim - 2)
        torch.testing.assert_close(m.eval()(x), ref.eval()(x.expand(*expand)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS, scope="module")
def test_checkpoint_path(tmp_path, name):
    torch.manual_seed(1)
    small = small_overrides(name)
    ref = bettervit.create_model(name, **small).eval()
    path = _save(ref, tmp_path / "ck.safetensors")
    m = bettervit.create_model(name, checkpoint_path=path, **small).eval()
    x = small_input(ref, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(_run(m, x), _run(ref, x))


@pytest.mark.parametrize("name", MODELS, scope="module")
def test_state_dict_round_trip(name):
    """A build from another seed, given the state_dict (strict), computes the same; keys and shapes agree."""
    ref = build_small(name)
    torch.manual_seed(123)
    other = bettervit.create_model(name, **small_overrides(name)).eval()
    x = small_input(ref)
    with torch.no_grad():
        assert not torch.allclose(_run(other, x), _run(ref, x))
        sd = ref.state_dict()
        assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in sd.items()}
        other.load_state_dict(sd, strict=True)
        torch.testing.assert_close(_run(other, x), _run(ref, x), rtol=0, atol=0)


@pytest.mark.parametrize("name", CLASSIFIERS, scope="module")
def test_features_only(name):
    m = build_small(name, fresh=True, features_only=True)
    info = m.feature_info
    x = small_input(m)
    maps = m(x)
    assert len(maps) == len(info.out_indices) == len(info.channels()) == len(info.reduction())
    temporal = (x.shape[2] // m.model.config.patch_stride_t,) if is_video(m.model) else ()
    for f, c, r in zip(maps, info.channels(), info.reduction()):
        assert f.shape == (2, c, *temporal, x.shape[-2] // r, x.shape[-1] // r)
    assert all(isinstance(n, str) for n in info.module_name())
    assert "classifier" not in m.pretrained_cfg and "num_classes" not in m.pretrained_cfg
    # the wrapper's maps are the model's forward_intermediates at those levels
    full = build_small(name)
    with torch.no_grad():
        ref = full.forward_intermediates(x, indices=list(info.out_indices), intermediates_only=True)
    for f, g in zip(maps, ref):
        torch.testing.assert_close(f.detach(), g)
    assert info.channels() == [full.feature_info[i]["num_chs"] for i in info.out_indices]
    assert info.reduction() == [full.feature_info[i]["reduction"] for i in info.out_indices]
    # a training step through the wrapper reaches every parameter the kept levels depend on
    sum(f.float().pow(2).mean() for f in maps).backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    # out_indices picks levels; negative indices count from the end
    m2 = build_small(name, features_only=True, out_indices=(0, -1))
    maps2 = m2(x)
    assert len(maps2) == 2 and maps2[1].shape[1] == m2.feature_info.channels()[-1]


# --- pretraining models -------------------------------------------------------------------------------------------
def _step(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor):
    """Loss, gradients of the trainable parameters, and how many tensors autograd saved outside checkpoints."""
    def forward():
        loss = model(x, mask=mask).loss
        return loss, loss

    return backward_with_saved_count(model, forward)


def _check_pretraining_step(model: torch.nn.Module, encoder: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor):
    """A finite scalar loss reaching every trainable parameter with a finite gradient; the encoder's gradient
    checkpointing recomputes (fewer saved tensors) and gives the same loss and gradients."""
    loss0, g0, saved0 = _step(model, x, mask)
    assert loss0.ndim == 0 and loss0.isfinite()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(g0) == trainable, sorted(trainable - set(g0))[:5]
    assert all(g.isfinite().all() for g in g0.values())
    encoder.set_grad_checkpointing(True)
    loss1, g1, saved1 = _step(model, x, mask)
    encoder.set_grad_checkpointing(False)
    assert saved1 < saved0
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-6)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", MAE, scope="module")
def test_mae_loss_gradients_checkpointing(name):
    model = build_small(name, fresh=True).train()
    x = small_input(model)
    mask = model.random_mask(x, model.config.mask_ratio, generator=torch.Generator().manual_seed(0))
    assert 0 < int(mask[0].sum()) < mask.shape[1]
    _check_pretraining_step(model, model, x, mask)


def _mim(student: str, teacher: str, seed: int = 0):
    torch.manual_seed(seed)
    small = small_overrides(student)
    size = small.pop("img_size")
    return build_mim(student, build_small(teacher, fresh=True, num_classes=0), img_size=size, **small)


@pytest.mark.parametrize("teacher", ["eva02_nano", "hiera_nano"])
@pytest.mark.parametrize("student", VITS, scope="module")
def test_mim_loss_gradients_checkpointing_state_dict(student, teacher):
    """MIM with each ViT as the student (a ViT or a Hiera teacher): loss in [-1, 1], every trainable parameter (the
    student, mask token, lm_head; never the teacher) gets a gradient, checkpointing changes nothing, and the
    state_dict (no teacher inside) round-trips."""
    mim = _mim(student, teacher).train()
    x = small_input(mim.encoder)
    grid = tuple(s // mim.encoder.config.patch_size for s in x.shape[-2:])
    mask = torch.zeros(x.shape[0], grid[0] * grid[1], dtype=torch.bool)
    mask[:, 1::2] = True
    _check_pretraining_step(mim, mim.encoder, x, mask)
    assert all(p.grad is None and not p.requires_grad for p in mim.teacher.parameters())
    loss = mim(x, mask).loss
    assert -1.0 <= loss.item() <= 1.0
    sd = mim.state_dict()
    assert not any(k.startswith("teacher") for k in sd)
    other = _mim(student, teacher, seed=1).train()
    other.teacher.load_state_dict(mim.teacher.state_dict())  # the teacher is not saved: same one for both
    other.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(other(x, mask).loss, mim(x, mask).loss, rtol=0, atol=0)
