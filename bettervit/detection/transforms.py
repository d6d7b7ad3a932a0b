"""Detection transforms on tensors, applied to an image, its boxes and its masks together.

Training uses horizontal flips and *large-scale jitter* (Ghiasi et al., "Simple Copy-Paste is a Strong Data
Augmentation Method for Instance Segmentation", CVPR 2021; the augmentation of ViTDet, Li et al., ECCV 2022): the
image is resized so that it fits a square of ``scale * img_size`` (aspect kept, ``scale`` uniform in ``scale_range``),
then a random ``img_size`` square is cropped from it, the bottom and right padded with zeros where it is smaller.
Evaluation resizes the longer side to ``img_size`` (aspect kept) and pads the bottom and right to a square.

Conventions: images uint8 (3, H, W); boxes xyxy in pixel-edge coordinates (a box covering columns 3..5 is
x1 = 3, x2 = 6), so resizing by a factor maps a box by the same factor; images are resized bilinearly
(antialiased when shrinking), masks by nearest neighbour with pixel centres aligned (``nearest-exact``), so a mask
stays inside its box up to half a pixel. The batch functions return ``(images uint8 (B, 3, S, S), targets, scales
(B,))``: ``scales[i]`` is the factor image i was resized by, so a prediction on the network input maps back to the
original image by dividing by it (the crop offset is training-only and not undone). Convert on the device with
``images.float() / 255`` before a torchvision detector.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_PER_INSTANCE = ("boxes", "labels", "masks", "iscrowd", "area")


def select(target: dict, keep: Tensor) -> dict:
    """The target with only the instances where ``keep`` (bool (N,)) is true; other keys unchanged."""
    return {k: (v[keep] if k in _PER_INSTANCE else v) for k, v in target.items()}


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes (N, 4) float32 xyxy in pixel edges of masks (N, H, W); an empty mask gives (0, 0, 0, 0)."""
    N, H, W = masks.shape
    masks = masks.bool()
    cols, rows = masks.any(1), masks.any(2)  # (N, W), (N, H): which columns / rows each mask touches
    x1 = torch.where(cols, torch.arange(W), W).amin(1)
    x2 = torch.where(cols, torch.arange(W), -1).amax(1) + 1
    y1 = torch.where(rows, torch.arange(H), H).amin(1)
    y2 = torch.where(rows, torch.arange(H), -1).amax(1) + 1
    empty = ~cols.any(1)
    boxes = torch.stack([x1, y1, x2, y2], 1).float().reshape(N, 4)
    boxes[empty] = 0
    return boxes


def drop_crowd(target: dict) -> dict:
    """The target without ``iscrowd`` regions: torchvision's losses cannot ignore them (COCO's evaluation does)."""
    if "iscrowd" not in target or not bool(target["iscrowd"].any()):
        return target
    return select(target, target["iscrowd"] == 0)


def hflip(image: Tensor, target: dict) -> tuple[Tensor, dict]:
    """Mirror an image (3, H, W) and its target left-right (applying it twice gives the input back)."""
    W = image.shape[-1]
    t = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = W - target["boxes"][:, 2], W - target["boxes"][:, 0]
    t["boxes"] = boxes
    if "masks" in t:
        t["masks"] = t["masks"].flip(-1)
    return image.flip(-1), t


def resize(image: Tensor, target: dict | None, size: tuple[int, int]) -> tuple[Tensor, dict | None]:
    """Resize an image (3, H, W) and its target to ``size`` = (h, w); boxes are scaled per axis."""
    H, W = image.shape[-2:]
    h, w = size
    if (h, w) == (H, W):
        return image, target
    x = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False,
                      antialias=h < H or w < W)
    out = x[0].clamp_(0, 255).round_().to(torch.uint8)
    if target is None:
        return out, None
    t = dict(target)
    t["boxes"] = target["boxes"] * torch.tensor([w / W, h / H, w / W, h / H])
    if "masks" in t:
        m = t["masks"]
        t["masks"] = F.interpolate(m[None].float(), size=(h, w), mode="nearest-exact")[0].to(m.dtype) if len(m) \
            else m.new_zeros((0, h, w))
    return out, t


def crop_pad(image: Tensor, target: dict, top: int, left: int, size: int, min_size: float = 1.0,
             recompute_boxes: bool = False) -> tuple[Tensor, dict]:
    """Cut the ``size`` square at (top, left) out of the image (pad bottom/right with zeros where it runs out),
    clip the boxes to it and drop those narrower or lower than ``min_size`` pixels (cropped away). With
    ``recompute_boxes`` and masks, each box becomes its cropped mask's extent (as detectron2's ViTDet recipe does
    after large-scale jitter), so a box cut by the crop shrinks to what is left of its object."""
    H, W = image.shape[-2:]
    h, w = min(size, H - top), min(size, W - left)
    out = image.new_zeros((image.shape[0], size, size))
    out[:, :h, :w] = image[:, top : top + h, left : left + w]
    t = dict(target)
    b = target["boxes"] - torch.tensor([left, top, left, top], dtype=target["boxes"].dtype)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    t["boxes"] = b
    if "masks" in t:
        m = t["masks"]
        mo = m.new_zeros((m.shape[0], size, size))
        mo[:, :h, :w] = m[:, top : top + h, left : left + w]
        t["masks"] = mo
        if recompute_boxes:
            t["boxes"] = b = mask_boxes(mo)
    keep = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    return out, _with_area(select(t, keep))


def _with_area(t: dict) -> dict:
    """``area`` recomputed after a transform: the mask's pixel count, else the box's area."""
    if "masks" in t:
        t["area"] = t["masks"].flatten(1).sum(1).float() if len(t["masks"]) else torch.zeros(0)
    else:
        b = t["boxes"]
        t["area"] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return t


def large_scale_jitter(image: Tensor, target: dict, img_size: int, scale_range: tuple[float, float] = (0.1, 2.0),
                       generator: torch.Generator | None = None) -> tuple[Tensor, dict, float]:
    """Resize to fit ``scale * img_size`` (scale uniform in ``scale_range``), random ``img_size`` crop, pad; with
    masks, boxes are recomputed from the masks (see :func:`crop_pad`). Returns (image uint8 (3, S, S), target, the resize factor)."""
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"large-scale jitter: expected 0 < min scale <= max scale, got {scale_range}")
    H, W = image.shape[-2:]
    s = lo + (hi - lo) * float(torch.rand((), generator=generator))
    factor = s * img_size / max(H, W)
    h, w = max(1, round(H * factor)), max(1, round(W * factor))
    image, target = resize(image, target, (h, w))
    top = int(torch.randint(0, h - img_size + 1, (), generator=generator)) if h > img_size else 0
    left = int(torch.randint(0, w - img_size + 1, (), generator=generator)) if w > img_size else 0
    image, target = crop_pad(image, target, top, left, img_size, recompute_boxes=True)
    return image, target, factor


def train_transform(images: Sequence[Tensor], targets: Sequence[dict], img_size: int,
                    scale_range: tuple[float, float] = (0.1, 2.0), flip_prob: float = 0.5,
                    generator: torch.Generator | None = None) -> tuple[Tensor, list[dict], Tensor]:
    """Training augmentation of a batch: crowd regions dropped (:func:`drop_crowd`), a horizontal flip with
    probability ``flip_prob``, then :func:`large_scale_jitter`. Returns (images uint8 (B, 3, S, S), targets,
    scales (B,))."""
    out, outs, scales = [], [], []
    for img, tgt in zip(images, targets):
        tgt = drop_crowd(tgt)
        if flip_prob > 0 and float(torch.rand((), generator=generator)) < flip_prob:
            img, tgt = hflip(img, tgt)
        img, tgt, f = large_scale_jitter(img, tgt, img_size, scale_range, generator)
        out.append(img)
        outs.append(tgt)
        scales.append(f)
    return torch.stack(out), outs, torch.tensor(scales, dtype=torch.float32)


def eval_transform(images: Sequence[Tensor], targets: Sequence[dict] | None, img_size: int
                   ) -> tuple[Tensor, list[dict] | None, Tensor]:
    """Evaluation: the longer side resized to ``img_size`` (aspect kept), bottom and right padded to a square.
    Returns (images uint8 (B, 3, S, S), the targets mapped alike (or None), scales (B,))."""
    out, outs, scales = [], [], []
    for i, img in enumerate(images):
        H, W = img.shape[-2:]
        f = img_size / max(H, W)
        size = (min(img_size, max(1, round(H * f))), min(img_size, max(1, round(W * f))))
        tgt = None if targets is None else targets[i]
        img, tgt = resize(img, tgt, size)
        if tgt is not None:
            img, tgt = crop_pad(img, tgt, 0, 0, img_size, min_size=0.0)
        elif img.shape[-2:] != (img_size, img_size):
            img = F.pad(img, (0, img_size - img.shape[-1], 0, img_size - img.shape[-2]))
        out.append(img)
        outs.append(tgt)
        scales.append(f)
    return torch.stack(out), (None if targets is None else outs), torch.tensor(scales, dtype=torch.float32)
