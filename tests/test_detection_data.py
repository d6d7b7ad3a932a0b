"""Detection data: digit scenes, COCO folders and their bad input, transforms, COCO evaluation on known detections."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from bettervit.detection import transforms as T
from bettervit.detection.data import build_detection_data
from bettervit.detection.evaluate import (coco_evaluate, decode_segmentation, encode_masks, to_coco_results,
                                          write_metrics)
from bettervit.detection.scenes import MAX_DIGITS, SceneSplit, load_digit_pool, plan_scenes, write_coco_folder

S = 64  # small canvases keep the file fast


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """A COCO folder of 12 train and 6 val scenes, written once; tests that break it work on a copy."""
    return write_coco_folder(tmp_path_factory.mktemp("scenes") / "coco", img_size=S, n_train=12, n_val=6)


def _copy(src, tmp_path):
    dst = tmp_path / "coco"
    shutil.copytree(src, dst)
    return dst


def _all(data, split):
    imgs, tgts = [], []
    for i, t in data.batches(split, list(range(data.size(split))), 5):
        imgs += i
        tgts += t
    return imgs, tgts


def _mask_box(m):
    """Tight xyxy (pixel edges) of a (H, W) mask."""
    ys, xs = torch.nonzero(m, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


# ---------------------------------------------------------------- digit scenes

def test_scenes_deterministic_and_independent_of_count():
    a = SceneSplit("train", 6, S).load_batch([0, 3, 5])
    b = SceneSplit("train", 20, S).load_batch([0, 3, 5])
    for (ia, ta), (ib, tb) in zip(a, b):
        assert torch.equal(ia, ib)
        for k in ta:
            assert torch.equal(ta[k], tb[k]), k
    alone = SceneSplit("train", 6, S).load_batch([3])[0]  # a scene does not depend on its batch
    assert torch.equal(alone[0], a[1][0]) and torch.equal(alone[1]["masks"], a[1][1]["masks"])
    c = SceneSplit("val", 6, S).load_batch([0])
    assert not torch.equal(a[0][0], c[0][0])


def test_scene_targets_follow_the_strokes():
    split = SceneSplit("train", 48, S)
    n_inst, cut, overlap = 0, 0, 0
    for img, t in split.load_batch(list(range(48))):
        n = len(t["labels"])
        n_inst += n
        assert 1 <= n <= MAX_DIGITS and t["masks"].shape == (n, S, S) and t["masks"].dtype == torch.uint8
        assert t["labels"].min() >= 1 and t["labels"].max() <= 10
        assert t["masks"].sum(0).max() <= 1  # visible masks are disjoint
        for m, box, area in zip(t["masks"], t["boxes"], t["area"]):
            assert torch.equal(_mask_box(m), box)  # the box is the visible mask's extent
            assert area == m.sum()
            cut += bool(box[0] == 0 or box[1] == 0 or box[2] == S or box[3] == S)
        assert img.shape == (3, S, S) and img.dtype == torch.uint8
    p = split.plans
    sq = p.box[:, :, :2], p.box[:, :, :2] + p.box[:, :, 2:]
    for i in range(48):  # planned digit squares that intersect
        v = np.flatnonzero(p.valid[i])
        lo, hi = sq[0][i, v], sq[1][i, v]
        inter = (np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None])).clip(0).prod(-1)
        overlap += bool((np.triu(inter, 1) > 0).any())
    assert n_inst >= 48 * 2.5 and cut >= 5 and overlap >= 10, (n_inst, cut, overlap)


def test_scenes_draw_train_and_val_digits_from_their_splits():
    from bettervit.data.digits import load_digits_split

    (xtr, ytr), (xva, yva) = load_digits_split(8)  # the classifier's split, at 8 px
    for (pool, labels), x, y in ((load_digit_pool("train"), xtr, ytr), (load_digit_pool("val"), xva, yva)):
        assert torch.equal((pool[:, 0] * 255).round().to(torch.uint8), x[:, 0]) and np.array_equal(labels, y.numpy())
    p = plan_scenes("val", 30, S, len(yva))
    assert p.digit.max() < len(yva) and p.valid.sum(1).min() >= 2 and p.valid.sum(1).max() <= 5


def test_scene_folder_round_trip(coco_dir):
    """Loading the written COCO folder gives the embedded scenes' images and targets exactly."""
    data = build_detection_data(str(coco_dir), S)
    embedded = build_detection_data("digit-scenes", S)
    assert data.class_names == embedded.class_names and data.category_ids == embedded.category_ids
    assert data.has_masks and data.skipped == 0
    for split, n in (("train", 12), ("val", 6)):
        assert data.size(split) == n
        scenes = SceneSplit(split, n, S)
        ia, ta = _all(data, split)
        for (b, y), a, x in zip(scenes.load_batch(list(range(n))), ia, ta):
            assert torch.equal(a, b)
            for k in ("boxes", "labels", "masks", "iscrowd", "area", "image_id", "orig_size"):
                assert torch.equal(x[k], y[k]) and x[k].dtype == y[k].dtype, k
        assert data.coco_gt(split)["annotations"] == scenes.coco_gt()["annotations"]


def test_write_coco_folder_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        write_coco_folder(tmp_path, img_size=32, n_train=2, n_val=2)
    assert (tmp_path / "mine.txt").read_text() == "keep" and not (tmp_path / "annotations").exists()
    write_coco_folder(tmp_path, img_size=32, n_train=2, n_val=2, overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep" and len(list((tmp_path / "train2017").iterdir())) == 2


def test_batches_with_workers_match_and_indices_shard(coco_dir):
    data = build_detection_data("digit-scenes:16", S)
    idx = data.indices("train", epoch=1, seed=3, batch_size=4)
    assert len(idx) == 16 and sorted(idx) == list(range(16)) and idx == data.indices("train", 1, 3, batch_size=4)
    assert idx != data.indices("train", 2, 3, batch_size=4)
    r0, r1 = data.indices("train", 1, 3, 0, 2, batch_size=3), data.indices("train", 1, 3, 1, 2, batch_size=3)
    assert len(r0) == len(r1) == 6 and not set(r0) & set(r1)
    assert data.indices("val", 0, 0, 1, 2, shuffle=False) == list(range(16))[1::2]
    a = list(data.batches("train", idx[:6], 4))
    b = list(data.batches("train", idx[:6], 4, workers=1))
    assert [len(x) for x, _ in a] == [4, 2] == [len(x) for x, _ in b]
    for (xa, ta), (xb, tb) in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(xa, xb))
        assert all(torch.equal(u["boxes"], v["boxes"]) for u, v in zip(ta, tb))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        data.indices("train", 0, 0, batch_size=32)


# ---------------------------------------------------------------- COCO folders: bad input

def _edit(root, split, fn):
    path = root / "annotations" / f"instances_{split}2017.json"
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_missing_and_corrupt_images_are_skipped_and_counted(coco_dir, tmp_path, caplog):
    root = _copy(coco_dir, tmp_path)
    (root / "train2017" / "000002.png").unlink()
    (root / "train2017" / "000003.png").write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING, logger="bettervit.detection.data"):
        data = build_detection_data(str(root), S)
    assert data.size("train") == 10 and data.skipped == 2
    assert 2 not in [im["id"] for im in data.coco_gt("train")["images"]]
    lines = [r.getMessage() for r in caplog.records if "instances_train2017" in r.getMessage()]
    assert len(lines) == 1 and "2 missing or unreadable image(s) skipped" in lines[0]
    # an image that passes the header check but fails to decode is left out of its batch
    (root / "train2017" / "000004.png").write_bytes((root / "train2017" / "000004.png").read_bytes()[:60])
    imgs, tgts = _all(data, "train")
    assert len(imgs) == 9 and 4 not in [int(t["image_id"]) for t in tgts]


def test_boxes_clipped_zero_area_dropped_negatives_kept(coco_dir, tmp_path):
    root = _copy(coco_dir, tmp_path)

    def edit(d):
        a = d["annotations"]
        a[0]["bbox"] = [-5.0, -3.0, 30.0, 20.0]  # reaches out of the top-left
        a[1]["bbox"] = [10.0, 10.0, 0.0, 5.0]  # zero width
        a[2]["bbox"] = [S + 4.0, 2.0, 6.0, 6.0]  # entirely outside: nothing left after clipping
        first = d["images"][0]["id"]
        d["annotations"] = [x for x in a if x["image_id"] != d["images"][-1]["id"] or x is a[0]]
        d["images"][-1]["id"] = 999  # an image without annotations: a negative
        assert first != 999

    _edit(root, "train", edit)
    data = build_detection_data(str(root), S)
    assert data.skipped == 2 and data.size("train") == 12
    _, tgts = _all(data, "train")
    by_id = {int(t["image_id"]): t for t in tgts}
    assert by_id[999]["boxes"].shape == (0, 4) and by_id[999]["masks"].shape == (0, S, S)
    first = next(t for t in tgts if len(t["boxes"]) and t["boxes"][0, 0] == 0 and t["boxes"][0, 1] == 0)
    assert first["boxes"][0].tolist() == [0.0, 0.0, 25.0, 17.0]
    total = sum(len(t["boxes"]) for t in tgts)
    assert total == len(data.coco_gt("train")["annotations"])


def test_unknown_category_names_the_id_and_file(coco_dir, tmp_path):
    root = _copy(coco_dir, tmp_path)
    _edit(root, "val", lambda d: d["annotations"][0].update(category_id=77))
    with pytest.raises(ValueError, match=r"instances_val2017.json.*category id 77") as e:
        build_detection_data(str(root), S)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,match", [
    ("[1, 2, 3]", "not COCO"),
    ('{"images": [], "annotations": []}', "not COCO"),
    ("{not json", "not valid JSON"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "lacks id / file_name"),
])
def test_not_coco_json_is_one_line(coco_dir, tmp_path, content, match):
    root = _copy(coco_dir, tmp_path)
    (root / "annotations" / "instances_train2017.json").write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        build_detection_data(str(root), S)
    assert "instances_train2017.json" in str(e.value) and "\n" not in str(e.value)


def test_folder_without_annotations(tmp_path):
    (tmp_path / "train2017").mkdir()
    with pytest.raises(ValueError, match=r"no annotations/instances_train\*\.json"):
        build_detection_data(str(tmp_path), S)
    with pytest.raises(ValueError, match="data not found"):
        build_detection_data(str(tmp_path / "nope"), S)
    with pytest.raises(ValueError, match="digit-scenes:N"):
        build_detection_data("digit-scenes:x", S)


def test_polygons_and_uncompressed_rle(coco_dir, tmp_path):
    root = _copy(coco_dir, tmp_path)

    def edit(d):
        a = d["annotations"]
        a[0]["segmentation"] = [[4, 4, 20, 4, 20, 12, 4, 12]]  # a 16 x 8 rectangle
        m = np.zeros((S, S), np.uint8)
        m[30:34, 10:15] = 1
        counts, flat, cur, run = [], m.flatten(order="F"), 0, 0
        for v in flat:  # uncompressed RLE: alternating run lengths, starting with zeros
            if v != cur:
                counts.append(run)
                cur, run = v, 0
            run += 1
        counts.append(run)
        a[1]["segmentation"] = {"size": [S, S], "counts": counts}

    _edit(root, "train", edit)
    d = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    data = build_detection_data(str(root), S)
    _, tgts = _all(data, "train")
    masks = {}
    for t in tgts:  # the annotations' order within an image is the JSON's
        ids = [a["id"] for a in d["annotations"] if a["image_id"] == int(t["image_id"])]
        masks.update(dict(zip(ids, t["masks"])))
    m0, m1 = masks[d["annotations"][0]["id"]], masks[d["annotations"][1]["id"]]
    assert abs(int(m0.sum()) - 16 * 8) <= 26 and m0[6:11, 6:19].all() and not m0[14:].any()
    assert int(m1.sum()) == 20 and m1[30:34, 10:15].all()


# ---------------------------------------------------------------- transforms

def _aligned(t, tol=1.0):
    """Every mask lies inside its box (within ``tol`` px) and fills it to within ``tol`` px on each side."""
    for m, b in zip(t["masks"], t["boxes"]):
        if m.any():
            mb = _mask_box(m)
            assert (mb - b).abs().max() <= tol, (mb, b)


def test_hflip_twice_is_identity_and_keeps_alignment():
    img, t = SceneSplit("train", 4, S).load_batch([1])[0]
    fi, ft = T.hflip(img, t)
    _aligned(ft, tol=0)
    assert not torch.equal(fi, img)
    bi, bt = T.hflip(fi, ft)
    assert torch.equal(bi, img) and all(torch.equal(bt[k], t[k]) for k in t)


def test_large_scale_jitter_keeps_boxes_and_masks_aligned():
    items = SceneSplit("train", 8, S).load_batch(list(range(8)))
    g = torch.Generator().manual_seed(0)
    for lo, hi in ((0.5, 0.8), (1.2, 2.0)):
        x, tgts, scales = T.train_transform([i for i, _ in items], [t for _, t in items], 48, (lo, hi), 0.5, g)
        assert x.shape == (8, 3, 48, 48) and x.dtype == torch.uint8 and scales.shape == (8,)
        assert (scales >= lo * 48 / S - 1e-6).all() and (scales <= hi * 48 / S + 1e-6).all()
        for t in tgts:
            assert t["masks"].shape[1:] == (48, 48) and len(t["masks"]) == len(t["boxes"]) == len(t["labels"])
            assert (t["boxes"] >= 0).all() and (t["boxes"] <= 48).all()
            _aligned(t, tol=0)  # boxes are recomputed from the masks after the crop


def test_crop_drops_boxes_cropped_away():
    img = torch.zeros(3, 100, 100, dtype=torch.uint8)
    masks = torch.zeros(2, 100, 100, dtype=torch.uint8)
    masks[0, 10:20, 10:20] = 1
    masks[1, 80:90, 80:90] = 1
    t = {"boxes": torch.tensor([[10.0, 10, 20, 20], [80, 80, 90, 90]]), "labels": torch.tensor([1, 2]),
         "masks": masks, "iscrowd": torch.zeros(2, dtype=torch.long), "area": torch.tensor([100.0, 100.0]),
         "image_id": torch.tensor(5)}
    ci, ct = T.crop_pad(img, t, top=5, left=5, size=50)
    assert ct["labels"].tolist() == [1] and ct["boxes"].tolist() == [[5.0, 5.0, 15.0, 15.0]]
    assert ct["masks"].shape == (1, 50, 50) and ct["area"].tolist() == [100.0] and int(ct["image_id"]) == 5
    _aligned(ct, tol=0)
    crowd = dict(t, iscrowd=torch.tensor([0, 1]))
    assert T.drop_crowd(crowd)["labels"].tolist() == [1]


def test_eval_transform_and_mapping_back():
    img = torch.randint(0, 255, (3, 60, 90), dtype=torch.uint8)
    masks = torch.zeros(1, 60, 90, dtype=torch.uint8)
    masks[0, 12:42, 30:75] = 1
    t = {"boxes": torch.tensor([[30.0, 12, 75, 42]]), "labels": torch.tensor([3]), "masks": masks,
         "iscrowd": torch.zeros(1, dtype=torch.long), "area": torch.tensor([1350.0]), "image_id": torch.tensor(7),
         "orig_size": torch.tensor([60, 90])}
    x, tt, scales = T.eval_transform([img], [t], 45)
    assert x.shape == (1, 3, 45, 45) and scales.tolist() == [0.5] and (x[0, :, 30:] == 0).all()
    assert tt[0]["boxes"].tolist() == [[15.0, 6.0, 37.5, 21.0]]
    _aligned(tt[0], tol=0.5)
    out = [{"boxes": tt[0]["boxes"], "labels": tt[0]["labels"], "scores": torch.tensor([0.9]),
            "masks": tt[0]["masks"][:, None].float()}]
    res = to_coco_results(out, [t], [10, 20, 30], scales)
    assert res[0]["bbox"] == [30.0, 12.0, 45.0, 30.0] and res[0]["category_id"] == 30
    back = decode_segmentation(res[0]["segmentation"], 60, 90)
    assert back.shape == (60, 90) and (torch.from_numpy(back) == masks[0]).float().mean() > 0.99


# ---------------------------------------------------------------- COCO evaluation

def _gt_of_boxes(boxes, crowd=(), size=100):
    """A COCO dict: one image per box (xywh), category 1; ``crowd`` indices are iscrowd regions."""
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size} for i in range(len(boxes))]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": list(b), "area": b[2] * b[3],
             "iscrowd": int(i in crowd)} for i, b in enumerate(boxes)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def test_ground_truth_as_detections_gives_100():
    data = build_detection_data("digit-scenes:16", S)
    gt = data.coco_gt("val")
    res = []
    for _, tgts in data.batches("val", data.indices("val", 0, 0, shuffle=False), 8):
        out = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.linspace(1, 0.5, len(t["labels"])),
                "masks": t["masks"][:, None].float()} for t in tgts]
        res += to_coco_results(out, tgts, data.category_ids)
    before = json.dumps([gt, res])
    m = coco_evaluate(gt, res)
    assert json.dumps([gt, res]) == before  # neither input is changed (results are written after evaluation)
    assert len(m) == 24 and m["box_AP"] == 100 and m["mask_AP"] == 100 and m["mask_AR100"] == 100
    assert m["box_APl"] == -1  # no large digits: COCO leaves the number undefined
    res[0] = dict(res[0], category_id=res[0]["category_id"] % 10 + 1)  # one wrong class
    assert coco_evaluate(gt, res, ["bbox"])["box_AP"] < 100


def test_shifted_boxes_iou_062_gives_ap50_100_ap75_0():
    # 40 x 40 boxes shifted right by d: IoU = (40 - d) / (40 + d) = 0.62 for d = 40 * 0.38 / 1.62
    d = 40 * 0.38 / 1.62
    boxes = [[10 + 3 * i, 20, 40, 40] for i in range(5)]
    res = [{"image_id": i + 1, "category_id": 1, "bbox": [b[0] + d, b[1], 40, 40], "score": 0.9}
           for i, b in enumerate(boxes)]
    m = coco_evaluate(_gt_of_boxes(boxes), res, ["bbox"])
    assert m["box_AP50"] == 100 and m["box_AP75"] == 0
    assert m["box_AP"] == pytest.approx(30.0, abs=1e-6)  # thresholds .50, .55, .60 of ten match
    assert m["box_APm"] == pytest.approx(30.0, abs=1e-6) and m["box_APs"] == -1 and m["box_AR100"] == 30


def test_crowd_regions_are_ignored_as_coco_does():
    boxes = [[10, 10, 30, 30], [50, 50, 40, 40]]
    gt = _gt_of_boxes(boxes, crowd=(1,))
    gt["images"], gt["annotations"][1]["image_id"] = gt["images"][:1], 1  # both on image 1
    on_crowd = {"image_id": 1, "category_id": 1, "bbox": [55, 55, 20, 20], "score": 0.99}
    hit = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.5}
    assert coco_evaluate(gt, [on_crowd, hit], ["bbox"])["box_AP"] == 100
    # without the crowd region the same higher-scored detection is a false positive ahead of the hit
    assert coco_evaluate(_gt_of_boxes(boxes[:1]), [on_crowd, hit], ["bbox"])["box_AP"] < 100


def test_no_detections_give_zeros():
    m = coco_evaluate(_gt_of_boxes([[10, 10, 50, 50]]), [], ["bbox", "segm"])
    assert m["box_AP"] == 0 and m["mask_AR100"] == 0 and m["box_APs"] == -1 and m["box_APl"] == -1
    with pytest.raises(ValueError, match="IoU type"):
        coco_evaluate(_gt_of_boxes([[1, 1, 2, 2]]), [], ["keypoints"])


def test_rle_round_trip():
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(3, 37, 23, generator=g) > 0.6).to(torch.uint8)
    rles = encode_masks(masks)
    assert all(r["size"] == [37, 23] and isinstance(r["counts"], str) for r in rles)
    json.dumps(rles)
    for m, r in zip(masks, rles):
        assert np.array_equal(decode_segmentation(r, 37, 23), m.numpy())
    assert encode_masks(torch.zeros(0, 5, 5)) == []


def test_matches_pycocotools():
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = build_detection_data("digit-scenes:16", S)
    gt = data.coco_gt("val")
    g = torch.Generator().manual_seed(0)
    res = []
    for _, tgts in data.batches("val", list(range(data.size("val"))), 8):
        out = []
        for t in tgts:  # jittered boxes, some masks eroded, random scores: a non-trivial AP
            n = len(t["labels"])
            boxes = (t["boxes"] + torch.randn(n, 4, generator=g) * 2).clamp(0, S)
            masks = t["masks"][:, None].float() * (torch.rand(n, 1, S, S, generator=g) > 0.2)
            out.append({"boxes": boxes, "labels": t["labels"], "scores": torch.rand(n, generator=g), "masks": masks})
        res += to_coco_results(out, tgts, data.category_ids)
    ours = coco_evaluate(gt, res)
    assert 10 < ours["box_AP"] < 95 and 10 < ours["mask_AP"] < 95
    ref_gt = COCO()
    ref_gt.dataset = json.loads(json.dumps(gt))
    ref_gt.createIndex()
    for iou, prefix in (("bbox", "box"), ("segm", "mask")):
        ev = COCOeval(ref_gt, ref_gt.loadRes(json.loads(json.dumps(res))), iou)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        for k, v in zip(["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"],
                        ev.stats):
            assert ours[f"{prefix}_{k}"] == pytest.approx(v * 100 if v >= 0 else -1, abs=1e-3), (prefix, k)


def test_write_metrics_atomic(tmp_path):
    res = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]
    mp, pp = write_metrics(tmp_path / "run", {"box_AP": 12.5}, res)
    assert json.loads(mp.read_text()) == {"box_AP": 12.5} and json.loads(pp.read_text()) == res
    write_metrics(tmp_path / "run", {"box_AP": 50.0}, [])
    assert json.loads(mp.read_text()) == {"box_AP": 50.0} and json.loads(pp.read_text()) == []
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.json", "predictions.json"]


@pytest.mark.parametrize("segm,match", [
    ({"size": [10, 10], "counts": "abc"}, "RLE mask of size"),
    ("nonsense", "expected polygons"),
    (None, "expected polygons"),
])
def test_bad_segmentation_is_one_line(coco_dir, tmp_path, segm, match):
    root = _copy(coco_dir, tmp_path)
    _edit(root, "val", lambda d: d["annotations"][3].update(segmentation=segm))
    with pytest.raises(ValueError, match=match) as e:
        build_detection_data(str(root), S)
    assert "instances_val2017.json" in str(e.value) and "\n" not in str(e.value)


def test_box_only_data_has_no_masks(coco_dir, tmp_path):
    root = _copy(coco_dir, tmp_path)
    for split in ("train", "val"):
        _edit(root, split, lambda d: [a.pop("segmentation") for a in d["annotations"]])
    data = build_detection_data(str(root), S)
    assert not data.has_masks
    _, tgts = _all(data, "val")
    assert "masks" not in tgts[0] and tgts[0]["boxes"].shape[1] == 4
    x, tt, _ = T.train_transform([torch.zeros(3, S, S, dtype=torch.uint8)], tgts[:1], 32, (0.5, 1.0))
    assert "masks" not in tt[0] and len(tt[0]["area"]) == len(tt[0]["boxes"])


def test_batches_feed_a_torchvision_mask_rcnn_and_its_outputs_evaluate():
    """The targets, transforms and result conversion fit torchvision's Mask R-CNN (a tiny one, untrained)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU())
    backbone.out_channels = 8
    model = MaskRCNN(backbone, num_classes=None, min_size=S, max_size=S, image_mean=[0.3] * 3, image_std=[0.4] * 3,
                     rpn_anchor_generator=AnchorGenerator(((16, 32),), ((1.0,),)),
                     box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
                     rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=64,
                     rpn_post_nms_top_n_test=32, rpn_batch_size_per_image=32, box_batch_size_per_image=32,
                     box_detections_per_img=10, box_score_thresh=0.0, box_head=TwoMLPHead(8 * 49, 16),
                     box_predictor=FastRCNNPredictor(16, 11), mask_head=MaskRCNNHeads(8, [8], 1),
                     mask_predictor=MaskRCNNPredictor(8, 8, 11))
    data = build_detection_data("digit-scenes:16", S)
    imgs, tgts = next(data.batches("train", data.indices("train", 0, 0, batch_size=4), 4))
    x, tt, _ = T.train_transform(imgs, tgts, S, (0.8, 1.25), generator=torch.Generator().manual_seed(0))
    losses = model(list(x.float() / 255), tt)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    sum(losses.values()).backward()
    model.eval()
    res = []
    with torch.no_grad():
        for imgs, tgts in data.batches("val", list(range(data.size("val"))), 8):
            x, _, scales = T.eval_transform(imgs, None, S)
            outs = model(list(x.float() / 255))
            assert all(o["masks"].shape[1:] == (1, S, S) for o in outs)
            res += to_coco_results(outs, tgts, data.category_ids, scales)
    m = coco_evaluate(data.coco_gt("val"), res)
    assert len(m) == 24 and all(v == -1 or 0 <= v <= 100 for v in m.values())


# ---------------------------------------------------------------- the images without labels (pretraining data)

def test_unlabeled_scenes_are_the_detection_scenes():
    from bettervit.data import build_data

    data = build_data("digit-scenes:20", S)
    assert not data.labeled and data.num_classes == 1 and data.size("train") == 20 and data.size("val") == 16
    assert data.preprocess_info()["crop_pct"] == 1.0
    idx = [3, 0, 17]
    x, y = next(data.batches("train", idx, 3))
    assert x.dtype == torch.uint8 and x.shape == (3, 3, S, S) and y.tolist() == [0, 0, 0]
    seen = SceneSplit("train", 20, S).load_batch(idx)  # what `detect train --data digit-scenes:20` renders
    assert torch.equal(x, torch.stack([img for img, _ in seen]))
    xw, _ = next(data.batches("train", idx, 3, workers=1))  # the DataLoader's worker path gives the same batch
    assert torch.equal(xw, x)
    sub = data.with_labels_per_class(5)  # subsets keep working on the scene split
    assert sub.size("train") == 5


def test_unlabeled_coco_folder_lists_the_json_images_and_skips_bad_ones(coco_dir, tmp_path, caplog):
    from bettervit.data import build_data

    root = _copy(coco_dir, tmp_path)
    (root / "train2017" / "000002.png").unlink()
    (root / "train2017" / "000005.png").write_bytes(b"not a png")
    (root / "train2017" / "stray.png").write_bytes((root / "train2017" / "000001.png").read_bytes())  # not listed
    with caplog.at_level(logging.WARNING, logger="bettervit.data.folder"):
        data = build_data(str(root), 32)
    assert not data.labeled and data.size("train") == 10 and data.size("val") == 6 and data.skipped == 2
    assert any("skipped 2" in r.getMessage() for r in caplog.records)
    x, y = next(data.batches("val", [0, 1], 2))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 0]
    assert sorted(p.name for p in (root / "train2017").iterdir())[:2] == ["000001.png", "000003.png"]  # untouched


@pytest.mark.parametrize("spec,match", [("digit-scenes:x", "digit-scenes:N with N >= 1"),
                                        ("digit-scenes:0", "digit-scenes:N with N >= 1")])
def test_unlabeled_scene_spec_errors(spec, match):
    from bettervit.data import build_data

    with pytest.raises(ValueError, match=match):
        build_data(spec, S)


def test_pretrain_takes_the_scenes_train_refuses_them(tmp_path, capsys):
    from bettervit.cli import main

    out = tmp_path / "mae"
    assert main(["pretrain", "--method", "mae", "--model", "mae_hiera_nano", "--data", "digit-scenes:16",
                 "--img-size", "64", "--epochs", "1", "--batch-size", "8", "--output", str(out), "--no-progress",
                 "--threads", "1"]) == 0
    assert (out / "last.pt").exists() and (out / "reconstructions.png").exists()
    capsys.readouterr()
    assert main(["train", "--model", "hiera_nano", "--data", "digit-scenes:16", "--epochs", "1",
                 "--output", str(tmp_path / "cls"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without class labels" in err[0]
    assert not (tmp_path / "cls" / "last.pt").exists()
