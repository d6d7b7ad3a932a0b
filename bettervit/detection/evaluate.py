"""COCO's evaluation protocol (Lin et al., "Microsoft COCO", ECCV 2014) for boxes and masks, with faster-coco-eval.

faster-coco-eval is a maintained C++ re-implementation of pycocotools' ``COCOeval`` that gives the same numbers (a
test compares them where pycocotools is installed) several times faster. ``coco_evaluate`` returns COCO's twelve
summary numbers per IoU type in percent: AP@[.5:.95], AP50, AP75, AP small / medium / large, AR with 1 / 10 / 100
detections, AR small / medium / large; a number COCO cannot define (no ground truth in that area range) is -1.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
IOU_TYPES = {"bbox": "box", "box": "box", "segm": "mask", "mask": "mask"}  # accepted spellings -> key prefix
_COCO_TYPES = {"box": "bbox", "mask": "segm"}


def encode_masks(masks: Tensor) -> list[dict]:
    """Binary masks (N, H, W) -> N COCO RLEs ``{"size": [H, W], "counts": str}`` (compressed, JSON-ready)."""
    from faster_coco_eval.core import mask as mask_utils

    if len(masks) == 0:
        return []
    arr = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).numpy())  # (H, W, N), column-major as RLE wants
    rles = mask_utils.encode(arr)
    for r in rles:
        if isinstance(r["counts"], bytes):
            r["counts"] = r["counts"].decode("ascii")
    return rles


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> uint8 (H, W) mask."""
    from faster_coco_eval.core import mask as mask_utils

    if isinstance(segm, list):  # polygons: a list of flat [x1, y1, x2, y2, ...] lists, merged into one mask
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, height, width)
    elif isinstance(segm, dict) and "counts" in segm:
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"segmentation is neither polygons nor RLE (got {type(segm).__name__})")
    m = mask_utils.decode(rle)
    return np.ascontiguousarray(m[..., 0] if m.ndim == 3 else m)


def coco_evaluate(gt: dict, results: list[dict], iou_types: Iterable[str] = ("bbox", "segm")) -> dict[str, float]:
    """COCO's 12 numbers (percent) per IoU type, keys ``box_AP`` ... ``box_ARl`` and ``mask_AP`` ... ``mask_ARl``.

    ``gt`` is a COCO instances dict (images, annotations, categories), ``results`` detections in COCO's results
    format (``image_id``, ``category_id``, ``score``, ``bbox`` xywh, ``segmentation`` RLE for masks). No results give
    0 for every number that ground truth defines."""
    from faster_coco_eval import COCO, COCOeval_faster

    types = []
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"IoU type {t!r}: expected one of bbox, segm (or box, mask)")
        types.append(IOU_TYPES[t])
    gt = _complete_gt(gt)
    coco_gt = COCO(gt, use_deepcopy=True)
    out: dict[str, float] = {}
    for prefix in types:
        dets = results if prefix == "box" else [r for r in results if "segmentation" in r]
        if not dets:
            out.update(_empty_stats(gt, prefix))
            continue
        coco_dt = coco_gt.loadRes([dict(r) for r in dets])
        ev = COCOeval_faster(coco_gt, coco_dt, iouType=_COCO_TYPES[prefix], print_function=log.debug)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        out.update({f"{prefix}_{n}": _percent(v) for n, v in zip(STAT_NAMES, ev.stats[:12])})
    return out


def _percent(v: float) -> float:
    return round(float(v) * 100, 4) if v >= 0 else -1.0


def _complete_gt(gt: dict) -> dict:
    """A shallow copy with the optional fields COCO's tools read (``iscrowd``, ``area``, ``id``) filled in."""
    anns = []
    for i, a in enumerate(gt.get("annotations", [])):
        a = dict(a)
        a.setdefault("iscrowd", 0)
        a.setdefault("id", i + 1)
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
        anns.append(a)
    return {**gt, "annotations": anns, "info": gt.get("info", {}), "licenses": gt.get("licenses", [])}


def _empty_stats(gt: dict, prefix: str) -> dict[str, float]:
    """Without detections every number is 0, except those of an area range without ground truth (-1)."""
    ranges = {"s": (0, 32 ** 2), "m": (32 ** 2, 96 ** 2), "l": (96 ** 2, 1e10)}
    areas = [a["area"] for a in gt["annotations"] if not a.get("iscrowd", 0)]
    out = {}
    for n in STAT_NAMES:
        r = n[-1] if n[-1] in ranges else None
        defined = any(ranges[r][0] <= x < ranges[r][1] for x in areas) if r else bool(areas)
        out[f"{prefix}_{n}"] = 0.0 if defined else -1.0
    return out


def to_coco_results(outputs: Sequence[dict], targets: Sequence[dict], category_ids: Sequence[int],
                    scales: Tensor | Sequence[float] | None = None, mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detector outputs -> COCO results in original image coordinates.

    ``outputs[i]``: ``boxes`` (N, 4) xyxy, ``labels`` (N,) in 1..K, ``scores`` (N,), optionally ``masks``
    (N, 1, H', W') probabilities on the network input. ``targets[i]`` gives ``image_id`` and ``orig_size`` (H, W).
    ``scales[i]`` is the factor the image was resized by (network input = original * scale, padded at the bottom and
    right; 1 when omitted): boxes are divided by it and masks cut to the unpadded part, resized back to (H, W) and
    thresholded at ``mask_threshold`` before RLE encoding."""
    results = []
    for i, (out, tgt) in enumerate(zip(outputs, targets)):
        s = 1.0 if scales is None else float(scales[i])
        H, W = (int(v) for v in tgt["orig_size"])
        boxes = out["boxes"].detach().float().cpu() / s
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        labels = out["labels"].cpu().tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        rles = None
        if "masks" in out:
            rles = encode_masks(_masks_to_original(out["masks"].detach().float().cpu(), s, H, W, mask_threshold))
        image_id = int(tgt["image_id"])
        for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            r = {"image_id": image_id, "category_id": int(category_ids[labels[j] - 1]),
                 "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                 "score": round(scores[j], 5)}
            if rles is not None:
                r["segmentation"] = rles[j]
            results.append(r)
    return results


def _masks_to_original(masks: Tensor, scale: float, H: int, W: int, threshold: float) -> Tensor:
    """(N, 1, H', W') probabilities on the padded network input -> bool (N, H, W) on the original image."""
    if masks.shape[0] == 0:
        return torch.zeros(0, H, W, dtype=torch.bool)
    h, w = min(masks.shape[-2], round(H * scale)), min(masks.shape[-1], round(W * scale))
    m = masks[:, :, :h, :w]
    if (h, w) != (H, W):
        m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)
    return m[:, 0] > threshold


def write_metrics(out_dir: str | os.PathLike, metrics: dict, results: list[dict]) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``predictions.json`` (COCO results format) into ``out_dir``, each atomically (a
    temporary file renamed over the old one, so a reader never sees half a file). Returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, obj in (("metrics.json", metrics), ("predictions.json", results)):
        path = out / name
        tmp = out / f".{name}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1 if name == "metrics.json" else None)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]
