"""RT-DETR (transformers' RTDetrV2ForObjectDetection) as a bettervit detector: a training step on the hierarchical
families and EVA-02's ViTDet pyramid, the target / output conversions (a box through to transformers' format and
back is unchanged; the top-k post-processing equals transformers' ``post_process_object_detection``), ``--init``,
and the CLI (train -> eval -> predict on a tiny COCO folder, bad options)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("timm")

from bettervit.detection.models import DetectorConfig, build_detector  # noqa: E402
from bettervit.detection.rtdetr import from_hf_boxes, postprocess, to_hf_targets  # noqa: E402
from helpers import assert_same_last_weights  # noqa: E402

#: RT-DETRv2 at test size: hidden 32, 10 queries, 2 decoder layers
TINY = dict(d_model=32, encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=2, decoder_ffn_dim=64,
            decoder_layers=2, decoder_attention_heads=2, decoder_n_points=2, num_queries=10, num_denoising=4,
            hidden_expansion=0.5, freeze_backbone_batch_norms=False)


def _rtdetr(backbone: str = "hiera_nano", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = DetectorConfig(detector="rt_detr", backbone=backbone, num_classes=3, masks=False, img_size=64,
                         detections_per_img=20, rtdetr=dict(TINY), **kw)
    return build_detector(cfg)


def _targets() -> list[dict]:
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 30.0]]), "labels": torch.tensor([1, 3])},
            {"boxes": torch.tensor([[0.0, 0.0, 64.0, 64.0]]), "labels": torch.tensor([2])}]


@pytest.mark.parametrize("backbone,overrides", [("hiera_nano", {}), ("maxvit_nano", {}),
                                                ("eva02_nano", dict(depth=2))])
def test_training_step_loss_finite_gradients_reach_the_trunk(backbone, overrides):
    model = _rtdetr(backbone, backbone_overrides=overrides).train()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    losses = model(images, _targets())
    assert {"loss_vfl", "loss_bbox", "loss_giou", "loss_aux", "loss_dn"} == set(losses)
    loss = torch.stack(list(losses.values())).sum()
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.trunk.parameters() if p.requires_grad]
    assert grads and sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    model.eval()
    with torch.no_grad():
        (out, _) = model(images)
    assert out["boxes"].shape == (20, 4) and out["scores"].shape == (20,)
    assert out["labels"].min() >= 1 and out["labels"].max() <= 3  # torchvision's 1..K


def test_grouped_losses_add_up_to_transformers_loss():
    model = _rtdetr().train()
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)  # the denoising queries are random: the same draw for both calls
    losses = model(list(x), _targets())
    torch.manual_seed(1)
    out = model.hf(pixel_values=(x - model.mean) / model.std, labels=to_hf_targets(_targets(), (64, 64)))
    torch.testing.assert_close(torch.stack(list(losses.values())).sum(), out.loss)


def test_box_round_trip_and_label_shift():
    t = _targets()
    hf = to_hf_targets(t, (64, 48))  # H 64, W 48
    assert hf[0]["class_labels"].tolist() == [0, 2] and hf[1]["class_labels"].tolist() == [1]
    torch.testing.assert_close(hf[0]["boxes"][0], torch.tensor([17 / 48, 23 / 64, 26 / 48, 34 / 64]))
    for a, b in zip(t, hf):
        torch.testing.assert_close(from_hf_boxes(b["boxes"], (64, 48)), a["boxes"])


def test_postprocess_equals_transformers_post_process_object_detection():
    from transformers import RTDetrImageProcessor
    from transformers.models.rt_detr.modeling_rt_detr import RTDetrObjectDetectionOutput

    g = torch.Generator().manual_seed(0)
    logits, boxes = torch.randn(2, 10, 3, generator=g), torch.rand(2, 10, 4, generator=g) * 0.5 + 0.2
    ours = postprocess(logits, boxes, (64, 64), top_k=10)  # transformers keeps as many as there are queries
    theirs = RTDetrImageProcessor().post_process_object_detection(
        RTDetrObjectDetectionOutput(logits=logits, pred_boxes=boxes), threshold=0.0, target_sizes=[(64, 64)] * 2)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["labels"], b["labels"] + 1)
        torch.testing.assert_close(a["boxes"], b["boxes"])


def test_init_from_a_classification_checkpoint_and_layer_ids(tmp_path):
    import bettervit

    clf = bettervit.create_model("hiera_nano", num_classes=10, img_size=64)
    path = tmp_path / "clf.pt"
    torch.save({"model": clf.state_dict(), "meta": {"epoch": 1}}, path)
    cfg = DetectorConfig(detector="rt_detr", backbone="hiera_nano", num_classes=3, masks=False, img_size=64,
                         rtdetr=dict(TINY))
    det = build_detector(cfg, pretrained=str(path))
    for name, p in det.trunk.named_parameters():
        torch.testing.assert_close(p, clf.state_dict()[name])
    ids, last = det.param_layer_ids(), det.num_layer_ids() - 1
    trunk = "hf.model.backbone.model._backbone.model."
    assert ids[trunk + "patch_embed.proj.weight"] == 0 and 0 < ids[trunk + "blocks.0.attn.qkv.weight"] < last
    assert ids["hf.model.enc_score_head.weight"] == last


def test_masks_refused():
    with pytest.raises(ValueError, match="boxes only"):
        build_detector(DetectorConfig(detector="rt_detr", backbone="hiera_nano", num_classes=3, masks=True))


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    from bettervit.cli import main

    return main(list(argv))


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    from bettervit.detection.scenes import write_coco_folder

    return write_coco_folder(tmp_path_factory.mktemp("coco") / "scenes", img_size=64, n_train=8, n_val=4)


def test_cli_train_eval_predict(coco_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli("detect", "train", "--detector", "rt_detr", "--backbone", "hiera_nano", "--data", str(coco_dir),
                "--recipe", "rtdetr_digit_scenes", "--img-size", "64", "--batch-size", "4", "--epochs", "1",
                "--threads", "1", "--no-progress", "--output", str(run)) == 0
    for f in ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "metrics.json", "predictions.json"):
        assert (run / f).is_file(), f
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_loss", "lr", "box_AP", "loss_vfl", "loss_dn"} <= set(row) and "mask_AP" not in row
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics) == 12 and all(k.startswith("box_") for k in metrics)  # boxes only, no mask numbers
    dets = json.loads((run / "predictions.json").read_text())
    assert dets and all("segmentation" not in d for d in dets)

    out = tmp_path / "eval"
    assert _cli("detect", "eval", "--checkpoint", str(run / "best.pt"), "--data", str(coco_dir),
                "--output", str(out)) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics  # the same model scored the same way
    assert "mask:" not in capsys.readouterr().out

    images = sorted((coco_dir / "val2017").glob("*.png"))[:2]
    pred = tmp_path / "pred"
    assert _cli("detect", "predict", "--checkpoint", str(run / "last.pt"), "--output", str(pred),
                "--score-thresh", "0", *map(str, images)) == 0
    assert all((pred / f"{p.stem}_det.png").is_file() for p in images)
    assert all({"file_name", "class_name", "bbox", "score"} <= set(d)
               for d in json.loads((pred / "predictions.json").read_text()))


@pytest.mark.parametrize("argv, needle", [
    (("--backbone", "hiera_nano_video"), "video"),
    (("--backbone", "hiera_nano", "--recipe", "rtdetr_nope"), "unknown detection recipe"),
    (("--backbone", "hiera_nano", "--img-size", "100"), "multiple of 32"),
])
def test_bad_options_one_line_exit_2(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli("detect", "train", "--detector", "rt_detr", *argv, "--output", str(out), "--epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_presets_default_for_rt_detr_and_listed(capsys):
    from bettervit.detection.recipes import default_recipe, get_recipe

    assert default_recipe("digit-scenes:600", "rt_detr") == "rtdetr_digit_scenes"
    assert default_recipe("/data/coco", "rt_detr") == "rtdetr_v2_r50"
    assert default_recipe("digit-scenes", None) == "digit_scenes"  # the R-CNNs' default unchanged
    full = get_recipe("rtdetr_v2_r50")["detector"]["rtdetr"]
    assert (full["num_queries"], full["decoder_layers"], full["d_model"]) == (300, 6, 256)  # RT-DETRv2-R50
    assert _cli("detect", "train", "--recipe", "list") == 0
    out = capsys.readouterr().out
    assert "rtdetr_digit_scenes" in out and "rtdetr_v2_r50" in out and "RT-DETR" in out


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(tmp_path):
    common = ("detect", "train", "--detector", "rt_detr", "--backbone", "hiera_nano", "--img-size", "64",
              "--batch-size", "4", "--threads", "1", "--no-progress", "--data", "digit-scenes:8", "--epochs", "2")
    assert _cli(*common, "--output", str(tmp_path / "full")) == 0
    assert _cli(*common, "--output", str(tmp_path / "cut"), "--stop-after", "1") == 0
    assert _cli("detect", "train", "--output", str(tmp_path / "cut"), "--resume", "--threads", "1",
                "--no-progress") == 0
    assert_same_last_weights(tmp_path / "full", tmp_path / "cut")
