"""Detection: Mask R-CNN and Cascade Mask R-CNN on every image family (tiny widths, 64-px images), Cascade R-CNN's
semantics as detectron2's ``CascadeROIHeads`` defines them, the stride check, and the CLI (train -> eval -> predict
on a tiny COCO folder, resume, bad options)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from bettervit.detection.backbones import build_backbone, check_strides
from bettervit.detection.models import DetectorConfig, StridedRoIAlign, build_detector, detector_loss
from helpers import assert_same_last_weights

TINY_HEADS = dict(fpn_channels=32, conv_dim=32, fc_dim=64, mask_dim=32, box_convs=1, mask_convs=1, roi_batch=32,
                  rpn_batch=64, anchor_scale=4.0, rpn_pre_nms=(200, 100), rpn_post_nms=(100, 50), img_size=64)
FAMILIES = {  # one tiny model per image family
    "hiera_nano": {},
    "maxvit_nano": {},
    "sam2_hiera_tiny": dict(embed_dim=32, stages=(1, 1, 1, 1), global_att_blocks=(2,), window_spec=(4, 4, 4, 4)),
    "eva02_nano": dict(depth=2),
    "eva_giant_patch14_224": dict(depth=2, embed_dim=64, num_heads=2),
}


def _targets(n: int, size: int = 64, k: int = 3, classes: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        xy = torch.rand(k, 2, generator=g) * size * 0.5
        wh = torch.rand(k, 2, generator=g) * size * 0.3 + 10
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1).round()
        masks = torch.zeros(k, size, size, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        out.append({"boxes": boxes, "labels": torch.randint(1, classes + 1, (k,), generator=g), "masks": masks})
    return out


def _detector(detector: str = "mask_rcnn", backbone: str = "hiera_nano", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = DetectorConfig(detector=detector, backbone=backbone, num_classes=3,
                         backbone_overrides=FAMILIES.get(backbone, {}), **{**TINY_HEADS, **kw})
    return build_detector(cfg)


def _train_step(model: torch.nn.Module) -> dict:
    model.train()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    losses = model(images, _targets(2))
    loss = detector_loss(losses)
    assert torch.isfinite(loss)
    loss.backward()
    return losses


@pytest.mark.parametrize("backbone", list(FAMILIES))
def test_mask_rcnn_training_step_and_inference_per_family(backbone):
    model = _detector("mask_rcnn", backbone)
    losses = _train_step(model)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    trunk_grads = [p.grad for p in model.trunk.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in trunk_grads), "no gradient reached the trunk"
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 64)])
    assert set(out) == {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[1:] == (1, 64, 64) and len(out["boxes"]) <= model.config.detections_per_img


@pytest.mark.parametrize("backbone", ["hiera_nano", "eva02_nano"])
def test_cascade_training_step(backbone):
    losses = _train_step(_detector("cascade_mask_rcnn", backbone))
    for k in range(3):
        assert {f"loss_classifier_stage{k}", f"loss_box_reg_stage{k}"} <= set(losses)
    assert "loss_mask" in losses


@pytest.mark.parametrize("backbone", ["hiera_nano", "maxvit_nano", "eva02_nano"])
def test_optimize_rewrites_the_trunk_and_keeps_the_detections(backbone):
    import bettervit

    det = _detector("mask_rcnn", backbone).eval()
    fast = bettervit.optimize(det)
    def rewritten(m):
        return [type(x).__name__ for x in m.modules() if type(x).__module__.startswith("bettervit.optimize")]
    assert rewritten(fast.backbone.trunk) and not rewritten(det), "the CPU pass did not reach the trunk"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = det.backbone(x), fast.backbone(x)
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)
        (da,), (db,) = det(list(x)), fast(list(x))
    assert len(da["boxes"]) == len(db["boxes"])
    torch.testing.assert_close(db["boxes"], da["boxes"], atol=1e-2, rtol=0)


def test_faster_rcnn_without_masks():
    model = _detector("mask_rcnn", masks=False)
    model.train()
    losses = model([torch.rand(3, 64, 64)], [{k: v for k, v in t.items() if k != "masks"} for t in _targets(1)])
    assert "loss_mask" not in losses and not model.roi_heads.has_mask()


def test_cascade_stage_ious_coder_weights_agnostic_regression():
    heads = _detector("cascade_mask_rcnn").roi_heads
    assert heads.stage_ious == (0.5, 0.6, 0.7)
    assert [c.weights for c in heads.box_coders] == [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                                     (30.0, 30.0, 15.0, 15.0)]
    assert heads.proposal_matcher.high_threshold == 0.5
    assert [m.high_threshold for m in heads.stage_matchers[1:]] == [0.6, 0.7]
    assert all(p.bbox_pred.out_features == 4 for p in heads.box_predictor)  # class-agnostic


def test_cascade_labels_each_stage_at_its_iou():
    """A box of IoU 0.65 with its ground truth is foreground at stage 1 (0.6) and background at stage 2 (0.7)."""
    heads = _detector("cascade_mask_rcnn").roi_heads
    gt = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([2])}
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0 * 0.65 + 10 * 0.35]])  # same x extent, 65% of the height
    from torchvision.ops import box_iou

    assert abs(box_iou(box, gt["boxes"]).item() - 0.65) < 0.01
    lab1, _ = heads._match(1, [box], [gt])
    lab2, _ = heads._match(2, [box], [gt])
    assert lab1.tolist() == [2] and lab2.tolist() == [0]


def test_cascade_training_appends_ground_truth_and_feeds_regressed_boxes():
    """Stage 0 sees the ground truth among its proposals; stage k + 1 pools exactly stage k's regressed, clipped,
    detached boxes (non-empty)."""
    model = _detector("cascade_mask_rcnn")
    heads = model.roi_heads
    seen, deltas = [], []
    heads.box_roi_pool.register_forward_pre_hook(lambda m, args: seen.append([p.clone() for p in args[1]]))
    for pred in heads.box_predictor:
        pred.register_forward_hook(lambda m, i, o: deltas.append(o[1].detach()))
    _train_step(model)
    assert len(seen) == 3
    gt = _targets(2)[0]["boxes"]
    stage0 = seen[0][0]
    assert all((stage0 == b).all(1).any() for b in gt), "ground truth not among stage 0's proposals"
    for k in range(2):
        for img in range(2):
            start = sum(len(p) for p in seen[k][:img])
            d = deltas[k][start:start + len(seen[k][img])]
            boxes = heads.box_coders[k].decode(d, [seen[k][img]]).reshape(-1, 4)
            from torchvision.ops import boxes as box_ops

            boxes = box_ops.clip_boxes_to_image(boxes, (64, 64))
            boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
            torch.testing.assert_close(seen[k + 1][img], boxes)


def test_cascade_test_time_scores_averaged_boxes_and_masks_from_last_stage():
    model = _detector("cascade_mask_rcnn", score_thresh=0.0).eval()
    heads = model.roi_heads
    outs, captured, mask_boxes = [], {}, []
    for pred in heads.box_predictor:
        pred.register_forward_hook(lambda m, i, o: outs.append(o))
    props = []
    heads.box_roi_pool.register_forward_pre_hook(lambda m, args: props.append([q.clone() for q in args[1]]))
    select = heads.select_detections
    heads.select_detections = lambda b, s, c, sh: (captured.update(boxes=b, scores=s), select(b, s, c, sh))[1]
    heads.mask_roi_pool.register_forward_pre_hook(lambda m, args: mask_boxes.append([q.clone() for q in args[1]]))
    with torch.no_grad():
        (res,) = model([torch.rand(3, 64, 64)])
    assert len(outs) == 3
    mean = torch.stack([torch.softmax(o[0], -1) for o in outs]).mean(0)
    torch.testing.assert_close(captured["scores"], mean)
    last = heads.box_coders[2].decode(outs[2][1], props[2]).reshape(-1, 4)
    torch.testing.assert_close(captured["boxes"], last)
    # the masks are predicted on the final detections (network-input coordinates: no resize here)
    torch.testing.assert_close(mask_boxes[0][0], res["boxes"])


def test_cascade_scales_gradient_into_features():
    from bettervit.detection.cascade import _ScaleGradient

    x = torch.ones(3, requires_grad=True)
    _ScaleGradient.apply(x, 1 / 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 1 / 3))


def test_patch14_pyramid_is_refused_patch16_pools_at_true_strides():
    with pytest.raises(ValueError, match="not powers of two"):
        build_backbone("eva02_nano", img_size=56, patch_size=14, depth=1)
    with pytest.raises(ValueError, match="not powers of two"):
        check_strides({"p2": 3.5, "p3": 7.0}, "x")
    model = _detector("mask_rcnn", "eva02_nano")
    assert model.backbone.strides == {"p2": 4.0, "p3": 8.0, "p4": 16.0, "p5": 32.0, "p6": 64.0}
    pool = model.roi_heads.box_roi_pool
    assert isinstance(pool, StridedRoIAlign) and pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    # one anchor size per map the backbone returns (p6 included)
    assert len(model.rpn.anchor_generator.sizes) == len(model.backbone(torch.rand(1, 3, 64, 64)))


def test_layer_ids_and_init_from_classification_and_mae_checkpoints(tmp_path):
    import bettervit

    clf = bettervit.create_model("hiera_nano", num_classes=10, img_size=64)
    path = tmp_path / "clf.pt"
    torch.save({"model": clf.state_dict(), "meta": {"epoch": 1}}, path)
    cfg = DetectorConfig(backbone="hiera_nano", num_classes=3, **TINY_HEADS)
    det = build_detector(cfg, pretrained=str(path))
    for name, p in det.trunk.named_parameters():
        torch.testing.assert_close(p, clf.state_dict()[name])
    mae = bettervit.create_model("mae_hiera_nano", img_size=64)  # an MAE pretraining checkpoint: the encoder loads
    torch.save({"model": mae.state_dict(), "meta": {}}, tmp_path / "mae.pt")
    det_mae = build_detector(cfg, pretrained=str(tmp_path / "mae.pt"))
    torch.testing.assert_close(det_mae.trunk.state_dict()["blocks.0.attn.qkv.weight"],
                               mae.state_dict()["blocks.0.attn.qkv.weight"])
    ids = det.param_layer_ids()
    last = det.num_layer_ids() - 1
    assert ids["roi_heads.box_predictor.cls_score.weight"] == last
    assert ids["backbone.body.model.patch_embed.proj.weight"] == 0
    assert 0 < ids["backbone.body.model.blocks.0.attn.qkv.weight"] < last


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    from bettervit.cli import main

    return main(list(argv))


TRAIN = ("detect", "train", "--backbone", "hiera_nano", "--img-size", "64", "--batch-size", "4", "--threads", "1",
         "--no-progress")


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    from bettervit.detection.scenes import write_coco_folder

    return write_coco_folder(tmp_path_factory.mktemp("coco") / "scenes", img_size=64, n_train=8, n_val=4)


@pytest.mark.slow
def test_cli_train_eval_predict_on_a_coco_folder(coco_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(*TRAIN, "--data", str(coco_dir), "--recipe", "digit_scenes", "--epochs", "1",
                "--detector", "cascade_mask_rcnn", "--output", str(run)) == 0
    for f in ("config.yaml", "metrics.jsonl", "curves.png", "best.pt", "last.pt", "metrics.json", "predictions.json"):
        assert (run / f).is_file(), f
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_loss", "lr", "img_per_s", "box_AP", "mask_AP", "loss_mask"} <= set(row)
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(k.startswith("box_") for k in metrics) == 12 and sum(k.startswith("mask_") for k in metrics) == 12

    out = tmp_path / "eval"
    assert _cli("detect", "eval", "--checkpoint", str(run / "best.pt"), "--data", str(coco_dir),
                "--output", str(out)) == 0
    assert json.loads((out / "metrics.json").read_text()).keys() == metrics.keys()
    assert isinstance(json.loads((out / "predictions.json").read_text()), list)
    assert "box:" in capsys.readouterr().out
    plain = tmp_path / "eval_plain"  # the default optimizes the trunk on the CPU: same detections to rounding
    assert _cli("detect", "eval", "--checkpoint", str(run / "best.pt"), "--data", str(coco_dir), "--no-optimize",
                "--output", str(plain)) == 0
    fast_dets = json.loads((out / "predictions.json").read_text())
    plain_dets = json.loads((plain / "predictions.json").read_text())
    assert len(fast_dets) == len(plain_dets) > 0
    assert max(abs(a["score"] - b["score"]) for a, b in zip(fast_dets, plain_dets)) < 1e-3

    images = sorted((coco_dir / "val2017").glob("*.png"))[:2]
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in images]
    pred = tmp_path / "pred"
    assert _cli("detect", "predict", "--checkpoint", str(run / "last.pt"), "--output", str(pred),
                "--score-thresh", "0", *map(str, images)) == 0
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in images] == digest  # inputs untouched
    assert all((pred / f"{p.stem}_det.png").is_file() for p in images)
    dets = json.loads((pred / "predictions.json").read_text())
    assert all({"file_name", "class_name", "bbox", "score"} <= set(d) for d in dets)
    # a second predict into the same folder refuses to overwrite
    assert _cli("detect", "predict", "--checkpoint", str(run / "last.pt"), "--output", str(pred),
                *map(str, images)) == 2


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(tmp_path):
    common = (*TRAIN, "--data", "digit-scenes:8", "--epochs", "2")
    assert _cli(*common, "--output", str(tmp_path / "full")) == 0
    assert _cli(*common, "--output", str(tmp_path / "cut"), "--stop-after", "1") == 0
    assert _cli("detect", "train", "--output", str(tmp_path / "cut"), "--resume", "--threads", "1",
                "--no-progress") == 0
    assert_same_last_weights(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize("argv, needle", [
    (("--backbone", "nope_model"), "nope_model"),
    (("--backbone", "hiera_nano", "--img-size", "100"), "multiple of 32"),
    (("--backbone", "hiera_nano", "--detector", "yolo"), "--detector"),
    (("--backbone", "hiera_nano", "--recipe", "nope"), "unknown detection recipe"),
    (("--backbone", "hiera_nano", "--lsj-scale", "2,1"), "--lsj-scale"),
    (("--backbone", "hiera_nano_video",), "video"),
    (("--img-size", "64",), "--backbone"),
])
def test_bad_train_options_one_line_exit_2(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli("detect", "train", *argv, "--output", str(out), "--epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_bad_eval_predict_inputs_one_line_exit_2(tmp_path, capsys):
    assert _cli("detect", "eval", "--checkpoint", str(tmp_path / "missing.pt")) == 2
    assert "not found" in capsys.readouterr().err
    not_det = tmp_path / "clf.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "meta": {}}, not_det)
    assert _cli("detect", "predict", "--checkpoint", str(not_det), "--output", str(tmp_path / "o"),
                str(not_det)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "detection checkpoint" in err
