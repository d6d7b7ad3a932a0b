"""``bettervit detect predict``: detections drawn on the images (boxes, masks, class names, scores) as PNGs in an
output folder, and all detections (score >= 0.05, COCO results format plus ``file_name`` and ``class_name``) in
``predictions.json`` there. The input images are only read: an output path that would be an input is refused."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor


def draw_detections(image: Tensor, boxes: Tensor, labels: list[str], masks: Tensor | None) -> Tensor:
    """uint8 (3, H, W) image with translucent masks (bool (N, H, W)), boxes (N, 4) xyxy and text labels."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
    colours = [palette[i % len(palette)] for i in range(len(labels))]
    if masks is not None and len(masks):
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colours)
    if len(boxes):
        image = draw_bounding_boxes(image, boxes, labels=labels, colors=colours, width=1)
    return image


def _output_paths(images: list[Path], out: Path, overwrite: bool) -> list[Path]:
    names = [out / f"{p.stem}_det.png" for p in images]
    if len(set(names)) != len(names):
        raise ValueError("predict: two input images share a file name stem; their outputs would collide")
    inputs = {p.resolve() for p in images}
    for n in names + [out / "predictions.json"]:
        if n.resolve() in inputs:
            raise ValueError(f"predict: output {n} would overwrite an input image; choose another --output")
        if n.exists() and not overwrite:
            raise ValueError(f"{n} exists; choose another --output or pass --overwrite")
    return names


@torch.no_grad()
def predict_images(checkpoint: str, images: list[Path], out: Path, score_thresh: float = 0.5,
                   device: str = "auto", overwrite: bool = False, optimize: bool = False) -> list[Path]:
    """Detect on each image (resized as in evaluation, results mapped back to its own size); returns the PNGs.
    ``optimize``: on the CPU, run the trunk through ``bettervit.optimize``."""
    from PIL import Image

    from .cli import load_detector
    from .data import decode_full
    from .evaluate import decode_segmentation, to_coco_results
    from .transforms import eval_transform

    for p in images:
        if not p.is_file():
            raise ValueError(f"image not found: {p}")
    names = _output_paths(images, out, overwrite)
    model, meta = load_detector(checkpoint, device, optimize=optimize)
    det = meta["detector"]
    pre = meta.get("preprocess") or {}
    class_names = pre.get("class_names") or meta.get("class_names") or [str(i) for i in range(det["num_classes"])]
    cat_ids = pre.get("category_ids") or list(range(1, det["num_classes"] + 1))
    dev = next(model.parameters()).device
    out.mkdir(parents=True, exist_ok=True)
    all_results = []
    for i, (path, target) in enumerate(zip(images, names)):
        try:
            img = decode_full(path)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot read image {path}: {type(e).__name__}") from e
        x, _, scales = eval_transform([img], None, int(det["img_size"]))
        (o,) = model([x[0].to(dev).float() / 255])
        o = {k: v.cpu() for k, v in o.items()}
        H, W = img.shape[-2:]
        res = to_coco_results([o], [{"image_id": i, "orig_size": (H, W)}], cat_ids, scales)
        name_of = dict(zip(cat_ids, class_names))
        for r in res:
            r.update(file_name=str(path), class_name=name_of.get(r["category_id"], str(r["category_id"])))
        all_results += res
        shown = [r for r in res if r["score"] >= score_thresh]
        xywh = [r["bbox"] for r in shown]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in xywh]).reshape(-1, 4)  # (N, 4) xyxy
        masks = None
        if shown and "segmentation" in shown[0]:
            masks = torch.stack([torch.from_numpy(decode_segmentation(r["segmentation"], H, W)).bool() for r in shown])
        labels = [f"{r['class_name']} {r['score']:.2f}" for r in shown]
        drawn = draw_detections(img, boxes, labels, masks)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(target, format="PNG")
    tmp = out / f".predictions.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(all_results))
    os.replace(tmp, out / "predictions.json")
    return names
