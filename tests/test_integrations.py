"""bettervit where timm is expected: timm's last API gaps (no timm needed), the timm registry hook, and the
libraries that take a timm backbone by name — Hugging Face transformers (RT-DETR, RT-DETRv2, D-FINE, Mask2Former
through ``TimmBackboneConfig``), segmentation_models_pytorch (Unet, FPN, UPerNet with ``tu-`` encoders) and effdet.

Each consumer test builds the smallest variants at 64 px, runs one training step with labels (the loss must be finite
and reach every backbone parameter that takes part) and an eval forward. The consumers are the ``integrations`` extra;
without them those tests are skipped.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bettervit
from bettervit.features import FeatureGetter

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "bv_"


# --- timm's last gaps (bettervit alone) ------------------------------------------------------------------------
@pytest.mark.parametrize("name,size", [("maxvit_nano", (96, 64)), ("maxvit_nano", 64), ("maxvit_nano", 128)])
def test_pool_size_follows_img_size(name, size):
    """pretrained_cfg's pool_size is the grid forward_features gives at the built size (timm's default-cfg check)."""
    model = bettervit.create_model(name, img_size=size).eval()
    h, w = (size, size) if isinstance(size, int) else size
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == [3, h, w]
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, h, w))
    assert list(feats.shape[-2:]) == list(cfg["pool_size"]) == [h // 32, w // 32]
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert list(model(torch.randn(1, 3, h, w)).shape[-2:]) == list(cfg["pool_size"])


GETTER_CASES = [("maxvit_nano", 64), ("hiera_nano", 64), ("eva02_nano", 56), ("sam2_hiera_tiny", 64)]


@pytest.mark.parametrize("name,px", GETTER_CASES)
def test_feature_cls_getter(name, px):
    """features_only=True, feature_cls='getter' as timm's FeatureGetterNet: the default levels, equal to the model's
    forward_intermediates; 'dict' keys them by level index; an unknown kind is one ValueError."""
    kwargs = dict(embed_dim=32, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,)) if "sam2" in name else {}
    torch.manual_seed(0)
    getter = bettervit.create_model(name, features_only=True, feature_cls="getter", **kwargs).eval()
    x = torch.randn(1, 3, px, px)
    plain = bettervit.create_model(name, **kwargs).eval()
    plain.load_state_dict(getter.model.state_dict(), strict=False)
    with torch.no_grad():
        maps = getter(x)
        want = plain.forward_intermediates(x, indices=list(getter.out_indices), intermediates_only=True)
    assert len(maps) == len(getter.feature_info.channels()) >= 3
    for m, c, r, w in zip(maps, getter.feature_info.channels(), getter.feature_info.reduction(), want):
        assert m.shape[1] == c and m.shape[-1] == -(-px // r)
        torch.testing.assert_close(m, w)
    as_dict = bettervit.create_model(name, features_only=True, feature_cls="dict", out_indices=(-2, -1), **kwargs)
    with torch.no_grad():
        out = as_dict.eval()(x)
    n = len(as_dict.model.feature_info)
    assert list(out) == [str(n - 2), str(n - 1)]
    with pytest.raises(ValueError, match="feature_cls"):
        bettervit.create_model(name, features_only=True, feature_cls="fx", **kwargs)


def test_return_layers_as_timm_wrappers():
    """return_layers maps module names to level indices; setting it to every level returns every level the pruned
    model keeps (what transformers' TimmBackbone does for output_hidden_states=True), then it can be set back."""
    model = bettervit.create_model("maxvit_nano", features_only=True, out_indices=(1, 2, 3)).eval()
    assert model.return_layers == {"stages.0": "1", "stages.1": "2", "stages.2": "3"}
    own = model.return_layers
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
        model.return_layers = {fi["module"]: str(i) for i, fi in enumerate(model.feature_info.info)}
        every = model(x)  # levels 0..3 (stage 4 was pruned)
        model.return_layers = own
        again = model(x)
    assert [e.shape[1] for e in every] == [32, 32, 64, 128]
    for i, o in zip(model.feature_info.out_indices, outs):
        torch.testing.assert_close(every[i], o)
    assert len(again) == 3
    model.return_layers = {"stages_0": "1"}  # timm's flattened name
    assert model.return_layers == {"stages.0": "1"}
    with pytest.raises(ValueError, match="return_layers"):
        model.return_layers = {"nope": "0"}


def test_feature_getter_loads_a_whole_model_checkpoint():
    """A checkpoint of the unwrapped classifier loads into a pruned wrapper (pruned parts' weights ignored)."""
    full = bettervit.create_model("hiera_nano").eval()
    getter = bettervit.create_model("hiera_nano", features_only=True, out_indices=(0, 1))
    getter.load_state_dict(full.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = full.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        for a, b in zip(getter.eval()(x), want):
            torch.testing.assert_close(a, b)
    bad = {k: v for k, v in full.state_dict().items() if not k.startswith("blocks.0.")}
    with pytest.raises(RuntimeError, match="blocks.0"):
        getter.load_state_dict(bad)


def test_get_pretrained_cfg_value_and_set_scriptable():
    assert bettervit.get_pretrained_cfg_value("hiera_tiny_224", "input_size") == [3, 224, 224]
    assert bettervit.get_pretrained_cfg_value("maxvit_tiny_tf_224.in1k", "pool_size") == [7, 7]
    assert bettervit.get_pretrained_cfg_value("hiera_tiny_224", "no_such_field") is None
    with pytest.raises(ValueError, match="unknown model"):
        bettervit.get_pretrained_cfg_value("hiera_tinyy", "input_size")
    assert not bettervit.is_scriptable()
    with bettervit.set_scriptable(True):
        assert bettervit.is_scriptable()
        model = bettervit.create_model("hiera_nano", scriptable=True)  # timm's switch: accepted, nothing changes
    assert not bettervit.is_scriptable()
    assert isinstance(model, torch.nn.Module)


# --- the timm registry hook ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timm():
    timm = pytest.importorskip("timm")
    bettervit.register_timm(PREFIX)
    return timm


def test_register_is_idempotent_and_keeps_timm_names(timm):
    names = bettervit.register_timm(PREFIX)
    assert names == bettervit.register_timm(PREFIX) == sorted(names)
    assert {f"{PREFIX}hiera_nano", f"{PREFIX}maxvit_tiny_tf_224", f"{PREFIX}vitdet_eva02_nano",
            f"{PREFIX}vitdet_eva_giant_patch14_224"} <= set(names)
    assert set(timm.list_models(module="bettervit_timm")) >= set(names)
    assert f"{PREFIX}hiera_tiny_224.mae_in1k_ft_in1k" in timm.list_pretrained(f"{PREFIX}hiera_tiny*")

    def taken(pretrained=False, **kwargs):  # someone else's model under a name the hook would use
        return torch.nn.Identity()

    taken.__name__ = "bvx_hiera_nano"
    timm.models.register_model(taken)
    assert "bvx_hiera_nano" not in bettervit.register_timm("bvx_")
    assert isinstance(timm.create_model("bvx_hiera_nano"), torch.nn.Identity)
    assert "hiera_tiny_224" not in timm.list_models(module="bettervit_timm")  # timm's own Hiera stays timm's
    with pytest.raises(ValueError, match="prefix"):
        bettervit.register_timm("bv.")


def test_missing_timm_is_one_line(monkeypatch):
    from bettervit.integrations import timm as hook

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'bettervit\[timm\]'") as err:
        hook.register_timm()
    assert "\n" not in str(err.value)


def test_create_model_through_timm(timm):
    """timm.create_model with a tag, features_only / out_indices / feature_cls; feature_info as consumers read it."""
    model = timm.create_model(f"{PREFIX}hiera_tiny_224.mae_in1k_ft_in1k", num_classes=5)
    assert model.pretrained_cfg["tag"] == "mae_in1k_ft_in1k" and model.num_classes == 5
    feats = timm.create_model(f"{PREFIX}hiera_nano", features_only=True, out_indices=(1, 2, 3), feature_cls="getter")
    info = feats.feature_info
    assert isinstance(feats, FeatureGetter)
    assert info.channels() == [64, 128, 256] and info.reduction() == [8, 16, 32]
    assert info.module_name() == [info.info[i]["module"] for i in (1, 2, 3)]
    assert info.get_dicts(keys=["num_chs", "reduction"]) == [dict(num_chs=c, reduction=r) for c, r in
                                                               zip([64, 128, 256], [8, 16, 32])]
    assert len(info.info) == 4 and [d["index"] for d in info.get_dicts()] == [1, 2, 3]
    with torch.no_grad():
        maps = feats.eval()(torch.randn(1, 3, 64, 64))
    assert [m.shape[1:] for m in maps] == [(64, 8, 8), (128, 4, 4), (256, 2, 2)]
    pyramid = timm.create_model(f"{PREFIX}vitdet_eva02_nano", features_only=True)
    assert pyramid.feature_info.reduction() == [4, 8, 16, 32]


def test_weights_through_timm(timm, tmp_path):
    """pretrained=True with timm's pretrained_cfg_overlay=dict(file=...), and timm's checkpoint_path (also into a
    features_only model, and a checkpoint made at another img_size, converted on load)."""
    torch.manual_seed(0)
    src = bettervit.create_model("maxvit_nano").eval()
    path = tmp_path / "maxvit_nano.pth"
    torch.save(src.state_dict(), path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = src(x)
        a = timm.create_model(f"{PREFIX}maxvit_nano", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        torch.testing.assert_close(a.eval()(x), want)
        b = timm.create_model(f"{PREFIX}maxvit_nano", checkpoint_path=str(path))
        torch.testing.assert_close(b.eval()(x), want)
        c = timm.create_model(f"{PREFIX}maxvit_nano", features_only=True, out_indices=(1, 2), checkpoint_path=str(path))
        for m, w in zip(c.eval()(x), src.forward_intermediates(x, indices=[1, 2], intermediates_only=True)):
            torch.testing.assert_close(m, w)
    d = timm.create_model(f"{PREFIX}maxvit_nano", img_size=96, checkpoint_path=str(path))  # bias tables resized
    torch.testing.assert_close(d.stem.conv1.weight, src.stem.conv1.weight)
    assert d.pretrained_cfg["input_size"] == [3, 96, 96]


def test_vitdet_trunk_weights_through_timm(timm, tmp_path):
    """A vitdet_ name loads its trunk from an EVA-02 classifier's file (14-pixel kernel resampled to 16)."""
    torch.manual_seed(3)
    src = bettervit.create_model("eva02_nano")
    path = tmp_path / "eva02_nano.pth"
    torch.save(src.state_dict(), path)
    det = timm.create_model(f"{PREFIX}vitdet_eva02_nano", pretrained=True, img_size=64,
                            pretrained_cfg_overlay=dict(file=str(path)), features_only=True, out_indices=(1, 3))
    trunk = det.model.backbone
    torch.testing.assert_close(trunk.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert trunk.patch_embed.proj.weight.shape[-1] == 16 and det.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        assert [m.shape[-1] for m in det.eval()(torch.randn(1, 3, 64, 64))] == [8, 2]


def _fake_hub_cache(root: Path, repo_id: str, state_dict: dict) -> None:
    """A huggingface_hub cache holding one repo's model.safetensors, as a past download leaves it (no network)."""
    from safetensors.torch import save_file

    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(snap / "model.safetensors"))


def test_hub_weights_offline_through_timm(timm, tmp_path, monkeypatch):
    """pretrained=True resolves bettervit's hub id through the hub cache (cache_dir, or the default cache)."""
    import huggingface_hub.constants

    torch.manual_seed(1)
    src = bettervit.create_model("hiera_nano", num_classes=0).eval()
    _fake_hub_cache(tmp_path, "bettervit-test/hiera_nano", src.state_dict())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    bettervit.register_timm("bvhub_", pretrained={"hiera_nano": "bettervit-test/hiera_nano"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model = timm.create_model("bvhub_hiera_nano", num_classes=0)  # the caller asks for no weights
        torch.testing.assert_close(model.eval()(x), src(x))
        model = timm.create_model(f"{PREFIX}hiera_nano", pretrained=True, num_classes=0, cache_dir=str(tmp_path),
                                  pretrained_cfg_overlay=dict(hf_hub_id="bettervit-test/hiera_nano"))
        torch.testing.assert_close(model.eval()(x), src(x))


@pytest.mark.slow
def test_runner_registers_without_code_changes(timm, tmp_path):
    """python -m bettervit.integrations.timm script.py args: the script's timm.create_model finds bv_ names."""
    script = tmp_path / "train.py"
    script.write_text("import sys, timm\n"
                      "m = timm.create_model('bv_hiera_nano', features_only=True, out_indices=(2, 3))\n"
                      "print(m.feature_info.reduction(), sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "bettervit.integrations.timm", str(script), "--epochs", "1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[16, 32] ['--epochs', '1']"


def test_runner_bad_prefix_is_one_line(timm, tmp_path, capsys):
    from bettervit.integrations.timm import main

    with pytest.raises(SystemExit) as err:
        main(["--prefix", "a.b", str(tmp_path / "train.py")])
    assert err.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- consumers: Hugging Face transformers ----------------------------------------------------------------------
def _detr_labels(n: int = 2) -> list[dict]:
    return [dict(class_labels=torch.tensor([1]), boxes=torch.tensor([[0.5, 0.5, 0.25, 0.25]])) for _ in range(n)]


def _train_and_eval(model, backbone, **inputs):
    """One training step (loss finite, gradient in the backbone) and an eval forward with hidden states."""
    model.train()
    out = model(**inputs)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    inputs = {k: v for k, v in inputs.items() if k == "pixel_values"}
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True)


def _detr_config(config_cls, backbone: str, out_indices: list[int], channels: list[int], **extra):
    """A tiny RT-DETR-style config on a bettervit backbone (as docs/backbone.md shows it)."""
    from transformers import TimmBackboneConfig

    return config_cls(
        backbone_config=TimmBackboneConfig(backbone=backbone, out_indices=out_indices),
        encoder_in_channels=channels, encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=2,
        encoder_layers=1, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, decoder_layers=2,
        decoder_attention_heads=2, decoder_n_points=2, num_queries=10, num_denoising=4, num_labels=3, **extra)


DETR_BACKBONES = [("hiera_nano", [1, 2, 3], [64, 128, 256]), ("maxvit_nano", [2, 3, 4], [64, 128, 256])]


@pytest.fixture(scope="module")
def transformers(timm):
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("detector", ["RTDetr", "RTDetrV2", "DFine"])
@pytest.mark.parametrize("name,out_indices,channels", DETR_BACKBONES)
def test_transformers_detectors(transformers, detector, name, out_indices, channels):
    extra = dict(hidden_expansion=0.5, lqe_hidden_dim=8, depth_mult=0.34) if detector == "DFine" else {}
    cfg = _detr_config(getattr(transformers, f"{detector}Config"), PREFIX + name, out_indices, channels, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, f"{detector}ForObjectDetection")(cfg)
    backbone = model.model.backbone.model  # transformers' TimmBackbone around bettervit's FeatureGetter
    assert isinstance(backbone._backbone, FeatureGetter)
    x = torch.randn(2, 3, 64, 64)
    out = _train_and_eval(model, backbone, pixel_values=x, labels=_detr_labels())
    assert out.logits.shape == (2, 10, 3) and out.pred_boxes.shape == (2, 10, 4)
    with torch.no_grad():  # every level, the requested ones among them
        bb = backbone(x, output_hidden_states=True)
    assert len(bb.hidden_states) == max(out_indices) + 1
    for i, f in zip(out_indices, bb.feature_maps):
        torch.testing.assert_close(bb.hidden_states[i], f)


def test_transformers_mask2former(transformers):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, TimmBackboneConfig

    cfg = Mask2FormerConfig(
        backbone_config=TimmBackboneConfig(backbone=PREFIX + "hiera_nano", out_indices=[0, 1, 2, 3]), num_labels=3,
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=8, train_num_points=64)
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(cfg)
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, 16:40, 8:48] = 1
    out = _train_and_eval(model, model.model.pixel_level_module.encoder, pixel_values=torch.randn(2, 3, 64, 64),
                          mask_labels=list(masks), class_labels=[torch.tensor([1])] * 2)
    assert out.masks_queries_logits.shape == (2, 8, 16, 16) and out.class_queries_logits.shape == (2, 8, 4)
    assert [h.shape[1] for h in out.encoder_hidden_states] == [32, 64, 128, 256]


def test_transformers_backbone_weights_offline(transformers, tmp_path):
    """transformers builds timm backbones with pretrained=False: a prefix registered with weights loads them anyway
    (here a local file), or the checkpoint is loaded after building with timm's own load_checkpoint."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection

    torch.manual_seed(2)
    src = bettervit.create_model("hiera_nano")
    path = tmp_path / "hiera_nano.safetensors"
    from safetensors.torch import save_file

    save_file(src.state_dict(), str(path))
    bettervit.register_timm("bvfile_", pretrained={"hiera_nano": str(path)})
    for prefix in ("bvfile_", PREFIX):
        model = RTDetrForObjectDetection(_detr_config(RTDetrConfig, prefix + "hiera_nano", [1, 2, 3],
                                                      [64, 128, 256]))
        getter = model.model.backbone.model._backbone
        if prefix == PREFIX:  # not loaded at build: load the whole classifier's checkpoint into the backbone
            assert not torch.equal(getter.model.patch_embed.proj.weight, src.patch_embed.proj.weight)
            timm_mod = pytest.importorskip("timm")
            timm_mod.models.load_checkpoint(getter, str(path))
        for k, v in getter.model.state_dict().items():
            torch.testing.assert_close(v, src.state_dict()[k], msg=k)


# --- consumers: segmentation_models_pytorch --------------------------------------------------------------------
# every image family; EVA-02 and EVA through their ViTDet pyramid (strides 4-32); small configs keep it fast
SMP_ENCODERS = [
    ("tu-bv_maxvit_nano", {}),
    ("tu-bv_hiera_nano", {}),
    ("tu-bv_sam2_hiera_tiny", dict(embed_dim=32, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,))),
    ("tu-bv_vitdet_eva02_nano", {}),
    ("tu-bv_vitdet_eva_giant_patch14_224", dict(vit_depth=4, embed_dim=64, num_heads=2)),
]
SMP_ARCHS = {
    "Unet": dict(decoder_channels=(32, 16, 16, 8, 8)),
    "FPN": dict(decoder_pyramid_channels=32, decoder_segmentation_channels=32),
    "UPerNet": dict(decoder_channels=32),
}


@pytest.fixture(scope="module")
def smp(timm):
    return pytest.importorskip("segmentation_models_pytorch")


@pytest.mark.parametrize("arch", list(SMP_ARCHS))
@pytest.mark.parametrize("encoder,params", SMP_ENCODERS)
def test_smp(smp, arch, encoder, params):
    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=2, **SMP_ARCHS[arch], **params)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, 64, 64)


def test_smp_plain_eva02_is_refused_pyramid_is_not(smp):
    """Why the vitdet_ names exist: smp needs strides 4/8/16/32, a plain EVA-02's levels are all at 14."""
    with pytest.raises(ValueError, match="downsampling pattern"):
        smp.Unet(encoder_name="tu-bv_eva02_nano", encoder_weights=None, classes=2)


# --- consumers: effdet -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,indices", [("hiera_nano", (1, 2, 3)), ("maxvit_nano", (2, 3, 4))])
def test_effdet(timm, name, indices):
    effdet = pytest.importorskip("effdet")
    config = effdet.get_efficientdet_config("efficientdet_d0")
    config.update(dict(backbone_name=PREFIX + name, backbone_indices=indices, image_size=(64, 64), num_classes=3,
                       fpn_channels=16, fpn_cell_repeats=1, box_class_repeats=1, max_detection_points=100,
                       max_det_per_image=10))
    torch.manual_seed(0)
    net = effdet.EfficientDet(config, pretrained_backbone=False)
    target = dict(bbox=torch.tensor([[[10.0, 10.0, 40.0, 40.0]]] * 2), cls=torch.tensor([[1.0]] * 2))
    out = effdet.DetBenchTrain(net).train()(torch.randn(2, 3, 64, 64), target)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())
    with torch.no_grad():
        dets = effdet.DetBenchPredict(net).eval()(torch.randn(2, 3, 64, 64))
    assert dets.shape == (2, 10, 6)  # x1, y1, x2, y2, score, class
