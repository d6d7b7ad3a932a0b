"""Detection data: the embedded digit scenes or a COCO folder, as torchvision's detection models take them.

``build_detection_data(spec, img_size)`` returns a :class:`DetectionData`; ``batches(split, indices, batch_size)``
yields ``(images, targets)``: a list of uint8 images (3, H, W) at their own size and a list of target dicts
(torchvision's convention): ``boxes`` float32 (N, 4) xyxy pixels clipped to the image, ``labels`` int64 (N,) in 1..K
(0 is the background), ``masks`` uint8 (N, H, W) when the data have masks, ``iscrowd`` int64 (N,), ``area`` float32
(N,), ``image_id`` int64 scalar (the COCO image id) and ``orig_size`` int64 (2,) = (H, W). Label l is COCO category
``category_ids[l - 1]``, in the order of the train JSON's ``categories``. Resizing and augmentation are
:mod:`bettervit.detection.transforms`' job.

A COCO folder follows COCO 2017's layout: ``DIR/annotations/instances_train*.json`` and ``instances_val*.json``
(one each), images in ``DIR/train*/`` and ``DIR/val*/`` (the folder named like the JSON after ``instances_``,
e.g. ``train2017``, else the only ``train*`` folder), each image's ``file_name`` relative to its folder. Bad input:
a file that is not a COCO instances JSON, an annotation naming a category or image the JSON does not list, or a
missing JSON stop with one line; missing or unreadable images are skipped, boxes reaching outside the image are
clipped and boxes of zero area dropped, each counted and logged once per split; images without annotations are kept
as negatives. Nothing is written to the folder.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data import epoch_indices

log = logging.getLogger(__name__)

SCENES = "digit-scenes"
LAYOUT = "annotations/instances_{train,val}*.json with images in train*/ and val*/"


@dataclass
class DetectionData:
    """Both splits of a detection data set plus what a checkpoint must remember about it."""

    name: str
    class_names: list[str]
    category_ids: list[int]  # label l in 1..K -> COCO category id category_ids[l - 1]
    has_masks: bool
    skipped: int = 0  # images skipped plus boxes dropped, over both splits
    splits: dict[str, object] = field(default_factory=dict, repr=False)
    img_size: int = 0

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (the detector has K + 1 with the background)."""
        return len(self.class_names)

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def indices(self, split: str, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                batch_size: int = 1) -> list[int]:
        """This rank's image order for one epoch: a permutation fixed by (seed, epoch), dealt round-robin.

        Training (shuffle) keeps only whole batches on every rank so ranks step together; evaluation keeps every
        image exactly once over all ranks (``bettervit.data.epoch_indices``, as ``DataBundle.indices``)."""
        return epoch_indices(self.name, self.size(split), epoch, seed, rank, world, shuffle, batch_size)

    def batches(self, split: str, indices: list[int], batch_size: int,
                workers: int = 0) -> Iterator[tuple[list[Tensor], list[dict]]]:
        """``(images, targets)`` for ``indices`` in order, ``batch_size`` at a time (an image that fails to decode is
        left out of its batch). ``workers`` > 0 loads batches in that many worker processes."""
        s = self.splits[split]
        chunks = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
        if workers <= 0:
            loaded = (s.load_batch(c) for c in chunks)
        else:
            loaded = iter(torch.utils.data.DataLoader(_BatchLoader(s), sampler=chunks, batch_size=None,
                                                      num_workers=workers, collate_fn=_identity))
        for items in loaded:
            if items:
                yield [img for img, _ in items], [t for _, t in items]

    def coco_gt(self, split: str) -> dict:
        """The split's ground truth as a COCO instances dict (image ids as in the source JSON; skipped images and
        dropped boxes left out, boxes clipped), for :func:`bettervit.detection.evaluate.coco_evaluate`."""
        return self.splits[split].coco_gt()

    def preprocess_info(self) -> dict:
        """Saved in checkpoints so ``predict`` and ``eval`` treat images and labels as training did."""
        return {"data": self.name, "img_size": self.img_size, "class_names": list(self.class_names),
                "category_ids": list(self.category_ids), "has_masks": self.has_masks}


class _BatchLoader(torch.utils.data.Dataset):
    """Lets a DataLoader hand a whole list of indices to a split's ``load_batch`` (scenes render batched)."""

    def __init__(self, split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, chunk: list[int]) -> list:
        return self.split.load_batch(chunk)


def _identity(x):
    return x


def scene_count(spec: str) -> int | None:
    """The train scene count of ``digit-scenes[:N]`` (default ``DEFAULT_TRAIN_SCENES``); None when ``spec`` names
    something else (e.g. a folder, even one called digit-scenes); a one-line ValueError for a bad N."""
    name, _, count = str(spec).partition(":")
    if name != SCENES or Path(spec).expanduser().is_dir():
        return None
    if count and not (count.isdigit() and int(count) >= 1):
        raise ValueError(f"--data {spec}: expected {SCENES} or {SCENES}:N with N >= 1 training scenes")
    from .scenes import DEFAULT_TRAIN_SCENES

    return int(count) if count else DEFAULT_TRAIN_SCENES


def build_detection_data(spec: str | None, img_size: int) -> DetectionData:
    """``spec``: ``"digit-scenes"`` (default; ``"digit-scenes:N"`` for N train scenes) or a COCO folder (see the
    module docstring). ``img_size`` is the scenes' canvas size; COCO images keep their own size."""
    spec = spec or SCENES
    n = scene_count(spec)
    if n is not None:
        from .scenes import CATEGORY_IDS, CLASS_NAMES, SceneSplit, val_scenes_for

        splits = {"train": SceneSplit("train", n, img_size), "val": SceneSplit("val", val_scenes_for(n), img_size)}
        return DetectionData(SCENES, list(CLASS_NAMES), list(CATEGORY_IDS), True, 0, splits, img_size)
    return build_coco_folder(Path(spec).expanduser(), img_size)


def build_coco_folder(root: Path, img_size: int) -> DetectionData:
    """A COCO 2017-layout folder (see the module docstring) -> DetectionData."""
    if not root.is_dir():
        raise ValueError(f"data not found: {root} (expected '{SCENES}' or a COCO folder with {LAYOUT})")
    files = {s: _find_split(root, s) for s in ("train", "val")}
    raw = {s: _read_coco_json(p) for s, (p, _) in files.items()}
    categories = raw["train"]["categories"]
    cat_ids = [int(c["id"]) for c in categories]
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"{files['train'][0]}: category ids repeat ({cat_ids})")
    names = [str(c.get("name", c["id"])) for c in categories]
    anns = raw["train"]["annotations"]
    n_segm = sum(1 for a in anns if a.get("segmentation"))
    has_masks = bool(anns) and n_segm == len(anns)
    if 0 < n_segm < len(anns):
        log.warning("%s: %d of %d annotations have no segmentation: boxes only, no masks", files["train"][0],
                    len(anns) - n_segm, len(anns))
    splits = {s: CocoSplit(s, raw[s], files[s][0], files[s][1], cat_ids, has_masks) for s in ("train", "val")}
    for s in ("train", "val"):
        if len(splits[s]) == 0:
            raise ValueError(f"{files[s][0]}: none of its {len(raw[s]['images'])} images is readable in {files[s][1]}")
    skipped = sum(sp.skipped for sp in splits.values())
    return DetectionData(str(root), names, cat_ids, has_masks, skipped, splits, img_size)


def _find_split(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of ``split`` in a COCO 2017-layout folder, or a one-line ValueError."""
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if not found:
        raise ValueError(f"{root} has no annotations/instances_{split}*.json (expected COCO 2017's layout: {LAYOUT})")
    if len(found) > 1:
        raise ValueError(f"{root}/annotations holds several instances_{split}*.json ({', '.join(p.name for p in found)}); "
                         f"keep one per split")
    stem = found[0].stem[len("instances_"):]  # e.g. train2017
    if (root / stem).is_dir():
        return found[0], root / stem
    dirs = sorted(p for p in root.glob(f"{split}*") if p.is_dir())
    if len(dirs) != 1:
        raise ValueError(f"{root}: expected the {split} images in {root / stem}/ (or a single {split}*/ folder), "
                         f"found {len(dirs)} {split}*/ folders")
    return found[0], dirs[0]


def _read_coco_json(path: Path) -> dict:
    """The parsed JSON, checked to be a COCO instances file (one-line ValueError otherwise)."""
    expected = "a COCO instances JSON: an object with 'images', 'annotations' and 'categories' lists"
    try:
        with open(path) as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({str(e).splitlines()[0]}); expected {expected}") from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations", "categories")):
        got = type(d).__name__ if not isinstance(d, dict) else f"keys {sorted(d)[:6]}"
        raise ValueError(f"{path}: not COCO (got {got}); expected {expected}")
    for kind, keys in (("images", ("id", "file_name")), ("annotations", ("image_id", "category_id", "bbox")),
                       ("categories", ("id",))):
        for entry in d[kind]:
            if not isinstance(entry, dict) or any(k not in entry for k in keys):
                raise ValueError(f"{path}: an entry of '{kind}' lacks {' / '.join(keys)} (got {str(entry)[:80]}); "
                                 f"expected {expected}")
            if not isinstance(entry["id" if "id" in keys else "image_id"], int):
                raise ValueError(f"{path}: an entry of '{kind}' has a non-integer id ({str(entry)[:80]}); "
                                 f"expected {expected}")
    return d


class CocoSplit:
    """One split of a COCO folder: the readable images, their cleaned annotations, decoded on demand."""

    def __init__(self, split: str, d: dict, json_path: Path, image_dir: Path, cat_ids: list[int],
                 has_masks: bool) -> None:
        self.split, self.image_dir, self.has_masks = split, image_dir, has_masks
        self.label_of = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.categories = d["categories"]
        counts = {"missing or unreadable image(s) skipped": 0, "zero-area box(es) dropped": 0,
                  "box(es) clipped to the image": 0}
        by_image = _annotations_by_image(d, json_path, self.label_of)
        self.images: list[dict] = []  # {"id", "file_name", "width", "height"} of the readable images
        self.anns: list[list[dict]] = []  # their cleaned annotations (bbox clipped, xywh)
        for im in d["images"]:
            size = _image_size(image_dir / im["file_name"])
            if size is None:
                counts["missing or unreadable image(s) skipped"] += 1
                continue
            w, h = size
            anns = []
            for a in by_image.get(im["id"], []):
                if has_masks:
                    _check_segmentation(a, h, w, json_path)
                box, clipped = _clip_xywh(a["bbox"], w, h)
                counts["box(es) clipped to the image"] += clipped
                if box is None:
                    counts["zero-area box(es) dropped"] += 1
                    continue
                anns.append({**a, "bbox": box})
            self.images.append({"id": im["id"], "file_name": im["file_name"], "width": w, "height": h})
            self.anns.append(anns)
        self.skipped = counts["missing or unreadable image(s) skipped"] + counts["zero-area box(es) dropped"]
        if any(counts.values()):
            log.warning("%s: %s", json_path, ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        self.image_ids = [im["id"] for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def load_batch(self, indices: list[int]) -> list[tuple[Tensor, dict]]:
        out = []
        for i in indices:
            item = self.load(i)
            if item is not None:
                out.append(item)
        return out

    def load(self, i: int) -> tuple[Tensor, dict] | None:
        """(image uint8 (3, H, W), target) of image ``i``, or None when it cannot be decoded (logged)."""
        im = self.images[i]
        path = self.image_dir / im["file_name"]
        try:
            img = decode_full(path)
        except Exception as e:  # noqa: BLE001 - a truncated file must not stop a long run
            log.warning("skipping %s: %s", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None
        H, W = img.shape[-2:]
        if (W, H) != (im["width"], im["height"]):
            log.warning("skipping %s: decoded size %dx%d, header said %dx%d", path, W, H, im["width"], im["height"])
            return None
        return img, self._target(i, H, W)

    def _target(self, i: int, H: int, W: int) -> dict:
        from .evaluate import decode_segmentation

        anns = self.anns[i]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        t = {"boxes": boxes,
             "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
             "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
             "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns],
                                  dtype=torch.float32),
             "image_id": torch.tensor(self.images[i]["id"], dtype=torch.int64),
             "orig_size": torch.tensor([H, W], dtype=torch.int64)}
        if self.has_masks:
            masks = [decode_segmentation(a["segmentation"], H, W) for a in anns]
            t["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, H, W, dtype=torch.uint8)
        return t

    def coco_gt(self) -> dict:
        anns = [a for per_image in self.anns for a in per_image]
        return {"info": {}, "licenses": [], "images": list(self.images), "annotations": anns,
                "categories": self.categories}


def _annotations_by_image(d: dict, path: Path, label_of: dict[int, int]) -> dict:
    """{image id: [annotation]}; a one-line ValueError for an unknown category or image id."""
    image_ids = {im["id"] for im in d["images"]}
    by_image: dict = {}
    for k, a in enumerate(d["annotations"]):
        if a["category_id"] not in label_of:
            raise ValueError(f"{path}: annotation {a.get('id', k)} has category id {a['category_id']}, which is not "
                             f"among the train categories {sorted(label_of)}")
        if a["image_id"] not in image_ids:
            raise ValueError(f"{path}: annotation {a.get('id', k)} refers to image id {a['image_id']}, which is not "
                             f"in 'images'")
        bbox = a["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{path}: annotation {a.get('id', k)} has bbox {bbox!r}; expected [x, y, width, height]")
        by_image.setdefault(a["image_id"], []).append({**a, "id": a.get("id", k + 1), "iscrowd": a.get("iscrowd", 0)})
    return by_image


def _check_segmentation(a: dict, h: int, w: int, path: Path) -> None:
    """A one-line ValueError unless ``a["segmentation"]`` is polygons (lists of x, y numbers) or an RLE of the
    image's size."""
    segm = a.get("segmentation")
    if isinstance(segm, list) and segm and all(isinstance(p, list) and len(p) % 2 == 0 and
                                               all(isinstance(v, (int, float)) for v in p) for p in segm):
        return
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [h, w]:
            raise ValueError(f"{path}: annotation {a['id']} has an RLE mask of size {segm['size']} on an image of "
                             f"height {h} and width {w}")
        return
    raise ValueError(f"{path}: annotation {a['id']} has segmentation {str(segm)[:60]!r}; expected polygons "
                     f"[[x1, y1, x2, y2, ...], ...] or an RLE {{'size': [h, w], 'counts': ...}} (every train "
                     f"annotation has one, so the data set has masks)")


def _clip_xywh(bbox: list, w: int, h: int) -> tuple[list[float] | None, int]:
    """(the box clipped to the image as xywh, or None when nothing of positive area is left; 1 if it was clipped)."""
    x, y, bw, bh = (float(v) for v in bbox)
    x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
    clipped = int((x1, y1, x2, y2) != (x, y, x + bw, y + bh))
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None, 0
    return [x1, y1, x2 - x1, y2 - y1], clipped


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, or None when the file is missing or not an image Pillow reads."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def decode_full(path: str | Path) -> Tensor:
    """Pillow-decode an image at its own size -> uint8 (3, H, W) (EXIF orientation is not applied, as in COCO)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


class SceneImages(torch.utils.data.Dataset):
    """The images of a digit-scene split without their annotations, as ``bettervit.data``'s folder splits give them:
    item ``i`` is (uint8 (3, S, S), 0); ``samples[i] = (scene index, 0)`` (the folder splits' layout, so
    ``subset_of`` and ``DataBundle.labels`` work). ``__getitems__`` renders a whole batch in one call."""

    def __init__(self, split: str, n_scenes: int, img_size: int) -> None:
        from .scenes import SceneSplit

        self.scenes = SceneSplit(split, n_scenes, img_size)
        self.samples: list[tuple[int, int]] = [(i, 0) for i in range(n_scenes)]
        self.skipped = 0

    def subset(self, indices: list[int]) -> "SceneImages":
        from ..data.folder import subset_of

        return subset_of(self, indices)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        rows = [self.samples[i][0] for i in indices]
        return [(img, 0) for img, _ in self.scenes.load_batch(rows)]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.__getitems__([i])[0]


def is_detection_spec(spec: str | None) -> bool:
    """True for ``digit-scenes[:N]`` and for a folder in COCO 2017's layout (``annotations/instances_*.json``)."""
    if not spec:
        return False
    path = Path(spec).expanduser()
    if path.is_dir():
        return any((path / "annotations").glob("instances_*.json"))
    return str(spec).partition(":")[0] == SCENES


def unlabeled_images(spec: str, img_size: int):
    """The images of detection data without labels, for MAE / MIM pretraining (``bettervit pretrain --data``):
    ``digit-scenes[:N]`` renders the train and val scenes at ``img_size`` (the same scenes ``detect train --data
    digit-scenes:N`` sees); a COCO folder gives the images its JSONs list, each resized (shorter side) and
    centre-cropped as an image folder's are. Returns a one-class ``bettervit.data.DataBundle`` (every label 0)."""
    from ..data import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, DataBundle
    from ..data.folder import ImageFolderSplit

    n = scene_count(spec)
    if n is not None:
        from .scenes import val_scenes_for

        splits = {"train": SceneImages("train", n, img_size), "val": SceneImages("val", val_scenes_for(n), img_size)}
        return DataBundle(SCENES, ["image"], img_size, img_size, IMAGENET_MEAN, IMAGENET_STD, False, splits,
                          labeled=False)
    root = Path(spec).expanduser()
    load_size = max(img_size, round(img_size / CROP_PCT))
    splits = {}
    for split, crop in (("train", load_size), ("val", img_size)):
        json_path, image_dir = _find_split(root, split)
        files = [image_dir / str(im["file_name"]) for im in _read_coco_json(json_path)["images"]]
        splits[split] = ImageFolderSplit.from_files(files, load_size, crop, where=image_dir)
        if len(splits[split]) == 0:
            raise ValueError(f"{json_path}: none of its {len(files)} images is readable in {image_dir}")
    return DataBundle(str(root), ["image"], img_size, load_size, IMAGENET_MEAN, IMAGENET_STD, False, splits,
                      skipped=sum(s.skipped for s in splits.values()), labeled=False)
