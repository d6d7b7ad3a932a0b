"""The embedded default for detection: *digit scenes*, canvases of several handwritten digits with boxes and masks.

Each scene is a square canvas of ``img_size`` pixels (128 by default) on which 2-5 of scikit-learn's 8x8 digits are
drawn one after the other, each enlarged to 20-48 pixels at 128 (the range scales with ``img_size``), its height and
width varied by up to 15%, at a uniform position that lets up to 30% of the digit's square leave the canvas, so digits
overlap and some are cut by the border. Every scene has its own dark, slightly tinted background and every digit its
own bright colour. Train scenes draw their digits from the train split of :mod:`bettervit.data.digits`, val scenes
from its val split, so no handwritten digit is seen in both.

Rendering. A digit is sampled onto the canvas with bilinear interpolation from its 8x8 image (pixel centres as
``align_corners=False`` places them, zero outside the image; bilinear is separable, so this is two small matrix
products per digit); its intensity ``a`` in [0, 1] becomes
an opacity ``clamp((a - 0.2) / 0.4, 0, 1)`` and the digit is painted over what is already there. All digits of a
batch of scenes are sampled in one call, so rendering is vectorised; scenes are rendered when a batch asks for them
(no memory for the set) and every scene is a pure function of (split, index): its plan comes from a generator seeded
with (split seed, index), so it is the same on every machine, in every worker process and for any scene count.

Masks and boxes (the *visible* extent, as COCO annotates occluded objects). A digit's stroke is where its enlarged
intensity exceeds ``STROKE_THRESHOLD`` (0.4, where the opacity is one half). Its mask is the part of its stroke that
lies on the canvas and that no later digit's stroke covers; its box is the tight extent of that mask (pixel edges,
``x2 = last column + 1``) and its area the mask's pixel count. A digit whose visible mask keeps less than
``MIN_VISIBLE_FRACTION`` (30%) of its on-canvas stroke, or fewer than ``MIN_VISIBLE_PIXELS`` (scaled from 12 px at
128), is almost fully hidden: it gets no annotation (it is still drawn).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .transforms import mask_boxes

log = logging.getLogger(__name__)

CLASS_NAMES = [str(i) for i in range(10)]
CATEGORY_IDS = list(range(1, 11))  # COCO category id of digit d is d + 1 (label d + 1 as well)
DEFAULT_IMG_SIZE = 128
DEFAULT_TRAIN_SCENES = 3000
DEFAULT_VAL_SCENES = 300
SPLIT_SEEDS = {"train": 101, "val": 202}
MAX_DIGITS = 5
STROKE_THRESHOLD = 0.4
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS = 12  # at 128 px; scaled with the canvas area
COCO_SPLIT_NAMES = {"train": "train2017", "val": "val2017"}  # folder and annotation names, as COCO 2017 spells them


def val_scenes_for(n_train: int) -> int:
    """Val scenes for ``n_train`` train scenes: a tenth, at least 16 and at most ``DEFAULT_VAL_SCENES``."""
    return max(16, min(DEFAULT_VAL_SCENES, n_train // 10))


@dataclass(frozen=True)
class ScenePlans:
    """The random choices of ``n`` scenes, one row per scene, ``MAX_DIGITS`` slots per row (``valid`` marks the
    slots in use; slot order is drawing order)."""

    digit: np.ndarray  # (n, D) int: index into the split's digit images
    valid: np.ndarray  # (n, D) bool
    box: np.ndarray  # (n, D, 4) float: the digit square on the canvas, (x0, y0, w, h) in pixels
    colour: np.ndarray  # (n, D, 3) float in [0, 1]
    background: np.ndarray  # (n, 3) float in [0, 1]


def plan_scenes(split: str, n: int, img_size: int, pool_size: int) -> ScenePlans:
    """The plans of scenes 0..n-1 of ``split``; scene ``i`` depends only on (split, i, img_size, pool_size)."""
    D, S = MAX_DIGITS, float(img_size)
    digit = np.zeros((n, D), np.int64)
    valid = np.zeros((n, D), bool)
    box = np.zeros((n, D, 4))
    colour = np.zeros((n, D, 3))
    background = np.zeros((n, 3))
    for i in range(n):  # a fixed number of draws per scene keeps scene i independent of the others
        rng = np.random.default_rng([SPLIT_SEEDS[split], i])
        count = int(rng.integers(2, D + 1))
        digit[i] = rng.integers(pool_size, size=D)
        side = rng.uniform(20, 48, size=D) * S / 128  # (D,) digit size in pixels
        aspect = np.exp(rng.uniform(-0.15, 0.15, size=D))
        w, h = side * aspect, side / aspect
        u = rng.random(size=(D, 2))
        x0 = -0.3 * w + u[:, 0] * (S - 0.4 * w)  # up to 30% of the square off either border
        y0 = -0.3 * h + u[:, 1] * (S - 0.4 * h)
        box[i] = np.stack([x0, y0, w, h], axis=1)
        hue = rng.random(size=D)
        colour[i] = _bright_colours(hue, rng.uniform(0.35, 0.9, size=D))
        background[i] = rng.uniform(0.0, 0.22) + rng.uniform(0, 0.08, size=3)
        valid[i, :count] = True
    return ScenePlans(digit, valid, box, colour, background)


def _bright_colours(hue: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """(D,) hues and saturations in [0, 1] -> (D, 3) RGB at full value (HSV -> RGB, vectorised)."""
    k = (np.array([5.0, 3.0, 1.0])[None] + hue[:, None] * 6) % 6  # (D, 3)
    ramp = np.clip(np.minimum(k, 4 - k), 0, 1)
    return 1.0 - saturation[:, None] * ramp


@functools.lru_cache(maxsize=2)
def load_digit_pool(split: str) -> tuple[Tensor, np.ndarray]:
    """(images float (N, 1, 8, 8) in [0, 1], labels (N,)) of the digits' ``split`` (the split of
    :mod:`bettervit.data.digits`); cached, treat as read-only."""
    from sklearn.datasets import load_digits

    from ..data.digits import _split_indices

    d = load_digits()
    tr, va = _split_indices(d.target)
    idx = tr if split == "train" else va
    return torch.from_numpy(d.images[idx].astype(np.float32) / 16.0)[:, None], d.target[idx].astype(np.int64)


def render_scenes(plans: ScenePlans, rows: np.ndarray, pool: Tensor, img_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Render the scenes ``rows`` of ``plans``: (images uint8 (B, 3, S, S), owner uint8 (B, S, S), stroke_px (B, D)).

    ``owner`` holds 1 + the slot of the digit that owns each stroke pixel (0: none), so slot k's visible mask is
    ``owner == k + 1``; ``stroke_px`` counts each slot's on-canvas stroke pixels before occlusion.
    """
    S, D, B = img_size, MAX_DIGITS, len(rows)
    box = torch.from_numpy(plans.box[rows]).float().reshape(B * D, 4)  # (B*D, 4) x0, y0, w, h
    src = pool[torch.from_numpy(plans.digit[rows]).reshape(-1), 0]  # (B*D, 8, 8)
    wy = _bilinear_weights(box[:, 1], box[:, 3], src.shape[-2], S)  # (B*D, S, 8)
    wx = _bilinear_weights(box[:, 0], box[:, 2], src.shape[-1], S)  # (B*D, S, 8)
    a = wy @ src @ wx.transpose(1, 2)  # (B*D, S, S): bilinear is separable
    a = a.reshape(B, D, S, S) * torch.from_numpy(plans.valid[rows]).float()[:, :, None, None]
    alpha = ((a - 0.2) / 0.4).clamp(0, 1)  # (B, D, S, S) opacity
    stroke = a > STROKE_THRESHOLD
    img = torch.from_numpy(plans.background[rows]).float()[:, :, None, None].expand(B, 3, S, S).contiguous()
    colour = torch.from_numpy(plans.colour[rows]).float()[..., None, None].expand(B, D, 3, S, S)
    owner = torch.zeros(B, S, S, dtype=torch.uint8)
    for k in range(D):  # painter's order: later digits cover earlier ones
        img = torch.lerp(img, colour[:, k], alpha[:, k, None])  # (B, 3, S, S)
        owner.masked_fill_(stroke[:, k], k + 1)
    images = img.mul_(255).round_().to(torch.uint8)
    return images, owner, stroke.float().sum((2, 3)).long()


def _bilinear_weights(start: Tensor, length: Tensor, n_src: int, n_out: int) -> Tensor:
    """(M, n_out, n_src) 1-D bilinear weights that enlarge ``n_src`` samples onto the canvas pixels ``start`` ..
    ``start + length`` (pixel centres as ``align_corners=False`` places them; zero outside the source)."""
    p = torch.arange(n_out, dtype=torch.float32)[None] + 0.5  # (1, n_out) canvas pixel centres
    src = (p - start[:, None]) * (n_src / length[:, None]) - 0.5  # (M, n_out) source coordinates
    i0 = src.floor()
    f = (src - i0)[..., None]  # (M, n_out, 1)
    taps = torch.arange(n_src, dtype=torch.float32)  # (n_src,)
    i0 = i0[..., None]
    return (taps == i0) * (1 - f) + (taps == i0 + 1) * f


def scene_targets(owner: Tensor, stroke_px: Tensor, labels: Tensor, min_pixels: int) -> list[dict]:
    """Each scene's annotations from its owner map, on-canvas stroke counts and slot labels (the digit classes 0..9),
    batched: owner (B, S, S), stroke_px and labels (B, D) -> B dicts of boxes, labels (1..10), masks, iscrowd, area,
    with almost hidden digits dropped."""
    B, S, _ = owner.shape
    D = stroke_px.shape[1]
    masks = owner[:, None] == torch.arange(1, D + 1, dtype=torch.uint8)[:, None, None]  # (B, D, S, S)
    offsets = (torch.arange(B) * (D + 1))[:, None, None]
    visible = torch.bincount((owner.long() + offsets).flatten(), minlength=B * (D + 1)).reshape(B, D + 1)[:, 1:]
    keep = (visible >= min_pixels) & (visible >= MIN_VISIBLE_FRACTION * stroke_px)  # (B, D)
    boxes = mask_boxes(masks.reshape(B * D, S, S)).reshape(B, D, 4)
    out = []
    for b in range(B):
        k = keep[b]
        out.append({"boxes": boxes[b, k], "labels": labels[b, k].long() + 1, "masks": masks[b, k].to(torch.uint8),
                    "iscrowd": torch.zeros(int(k.sum()), dtype=torch.int64), "area": visible[b, k].float()})
    return out


class SceneSplit:
    """One split of digit scenes: ``load_batch(indices)`` renders them; ``image_ids[i] = i + 1``."""

    def __init__(self, split: str, n_scenes: int, img_size: int) -> None:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"digit scenes: split must be 'train' or 'val', got {split!r}")
        if n_scenes < 1 or img_size < 16:
            raise ValueError(f"digit scenes need >= 1 scene and an image size >= 16, got {n_scenes} and {img_size}")
        self.split, self.img_size = split, img_size
        self.pool, self.pool_labels = load_digit_pool(split)
        self.plans = plan_scenes(split, n_scenes, img_size, len(self.pool))
        self.min_pixels = max(3, round(MIN_VISIBLE_PIXELS * (img_size / DEFAULT_IMG_SIZE) ** 2))
        self.image_ids = list(range(1, n_scenes + 1))
        self.skipped = 0
        self._gt: dict | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_batch(self, indices: list[int]) -> list[tuple[Tensor, dict]]:
        """[(image uint8 (3, S, S), target)] for the scenes at ``indices``."""
        if not len(indices):
            return []
        rows = np.asarray(indices, dtype=np.int64)
        images, owner, stroke_px = render_scenes(self.plans, rows, self.pool, self.img_size)
        labels = torch.from_numpy(self.pool_labels[self.plans.digit[rows]])  # (B, D)
        out = []
        targets = scene_targets(owner, stroke_px, labels, self.min_pixels)
        for b, (i, t) in enumerate(zip(rows.tolist(), targets)):
            t["image_id"] = torch.tensor(self.image_ids[i], dtype=torch.int64)
            t["orig_size"] = torch.tensor([self.img_size, self.img_size], dtype=torch.int64)
            out.append((images[b], t))
        return out

    def coco_gt(self) -> dict:
        """The split as a COCO instances dict (RLE masks), rendered once and cached."""
        if self._gt is None:
            self._gt = coco_dict(self, [f"{i:06d}.png" for i in self.image_ids])
        return self._gt


def coco_dict(split: SceneSplit, file_names: list[str], chunk: int = 32, images_out: Path | None = None) -> dict:
    """A COCO instances dict of every scene of ``split`` (``file_names[i]`` for scene i); with ``images_out`` each
    scene is also saved there as a PNG."""
    from .evaluate import encode_masks

    images, annotations = [], []
    for start in range(0, len(split), chunk):
        for img, t in split.load_batch(list(range(start, min(start + chunk, len(split))))):
            image_id = int(t["image_id"])
            name = file_names[image_id - 1]
            if images_out is not None:
                _save_png(img, images_out / name)
            images.append({"id": image_id, "file_name": name, "width": split.img_size, "height": split.img_size})
            boxes = t["boxes"].tolist()
            rles = encode_masks(t["masks"])
            for box, label, rle, area in zip(boxes, t["labels"].tolist(), rles, t["area"].tolist()):
                x1, y1, x2, y2 = box
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "segmentation": rle,
                                    "iscrowd": 0})
    categories = [{"id": c, "name": n, "supercategory": "digit"} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    info = {"description": f"bettervit digit scenes ({split.split}, {len(split)} scenes at {split.img_size} px)"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _save_png(img: Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, format="PNG")


def write_coco_folder(out_dir: str | os.PathLike, img_size: int = DEFAULT_IMG_SIZE, n_train: int = DEFAULT_TRAIN_SCENES,
                      n_val: int | None = None, overwrite: bool = False) -> Path:
    """Write the digit scenes in COCO 2017's layout: ``out_dir/annotations/instances_{train,val}2017.json`` and the
    PNGs in ``out_dir/{train,val}2017/``. ``n_val`` defaults to ``val_scenes_for(n_train)``. An existing non-empty
    ``out_dir`` is refused unless ``overwrite`` (then only the files written here are replaced). Returns the folder."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty (choose a new folder, or pass overwrite to replace its files)")
    n_val = val_scenes_for(n_train) if n_val is None else n_val
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        name = COCO_SPLIT_NAMES[split]
        (out / name).mkdir(exist_ok=True)
        s = SceneSplit(split, n, img_size)
        gt = coco_dict(s, [f"{i:06d}.png" for i in s.image_ids], images_out=out / name)
        path = out / "annotations" / f"instances_{name}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(gt))
        os.replace(tmp, path)
    log.info("wrote %d train and %d val digit scenes to %s", n_train, n_val, out)
    return out
