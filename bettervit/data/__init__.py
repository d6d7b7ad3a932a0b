"""Data for training and evaluation: the embedded digits or an image folder, sharded per rank, augmented on device.

``build_data(spec, img_size)`` returns a ``DataBundle`` whose ``batches(split, epoch, ...)`` yields uint8 image batches
(B, 3, H, W) and int64 labels. Batches stay uint8 until they reach the device; ``augment.DeviceAugment`` turns them
into normalised float inputs there, batched (kornia).

Video (``build_data(spec, img_size, num_frames=T)``, for video models): batches are uint8 clips (B, 3, T, H, W); the
embedded default is synthetic moving digits (:mod:`bettervit.data.moving_digits`), user data a folder of clips
(:mod:`bettervit.data.clips`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .folder import ImageFolderSplit, iterate_folder, list_classes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_MEAN = (0.3, 0.3, 0.3)
DIGITS_STD = (0.4, 0.4, 0.4)
CROP_PCT = 0.875  # image folders: load at img_size / CROP_PCT, then crop


def epoch_indices(name: str, n: int, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                  batch_size: int = 1) -> list[int]:
    """This rank's order of ``n`` samples for one epoch: a permutation fixed by (seed, epoch), dealt round-robin.

    Training (shuffle) keeps only whole batches on every rank so ranks step together; evaluation keeps every
    sample exactly once over all ranks. ``name`` (the data's) goes into the error when no batch can be filled.
    """
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        per_rank = (n // world) // batch_size * batch_size
        if per_rank == 0:
            raise ValueError(
                f"{name}: {n} training images cannot fill one batch of {batch_size} on each of {world} rank(s)")
        return order[rank::world][:per_rank]
    return list(range(n))[rank::world]


@dataclass
class DataBundle:
    """Both splits plus what a checkpoint must remember to preprocess new images the same way."""

    name: str
    class_names: list[str]
    img_size: int
    load_size: int  # training images arrive at load_size x load_size; the random crop brings them to img_size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grey: bool  # digits: predict converts images to grey first
    splits: dict[str, object] = field(repr=False)
    skipped: int = 0
    num_frames: int = 0  # video: frames per clip (batches are (B, 3, T, H, W)); 0 for images
    labeled: bool = True  # False: images without labels (every label 0), for pretraining only

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def size(self, split: str) -> int:
        s = self.splits[split]
        return len(s[1]) if isinstance(s, tuple) else len(s)

    def indices(self, split: str, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                batch_size: int = 1) -> list[int]:
        """This rank's sample order for one epoch: a permutation fixed by (seed, epoch), dealt round-robin.

        Training (shuffle) keeps only whole batches on every rank so ranks step together; evaluation keeps every
        sample exactly once over all ranks.
        """
        return epoch_indices(self.name, self.size(split), epoch, seed, rank, world, shuffle, batch_size)

    def batches(self, split: str, indices: list[int], batch_size: int, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        s = self.splits[split]
        if isinstance(s, tuple):
            x, y = s
            for i in range(0, len(indices), batch_size):
                idx = torch.tensor(indices[i : i + batch_size], dtype=torch.long)
                yield x[idx], y[idx]
        else:
            yield from iterate_folder(s, indices, batch_size, workers)

    def labels(self, split: str) -> Tensor:
        """(N,) int64 labels of a split, without decoding any image."""
        s = self.splits[split]
        if isinstance(s, tuple):
            return s[1]
        return torch.tensor([label for _, label in s.samples], dtype=torch.long)

    def with_labels_per_class(self, n: int, seed: int = 0) -> "DataBundle":
        """A copy whose train split keeps ``n`` images of every class (val unchanged).

        The subset is stratified and fixed by ``seed``: each class's images are permuted by a generator seeded with
        ``seed`` and the first ``n`` kept, so the same ``n`` and seed give the same images on every machine, and a
        larger ``n`` keeps every image of a smaller one.
        """
        if n < 1:
            raise ValueError(f"--labels-per-class must be >= 1, got {n}")
        y = self.labels("train")
        g = torch.Generator().manual_seed(seed)
        keep = []
        for c in range(self.num_classes):
            idx = torch.nonzero(y == c).flatten()
            if len(idx) < n:
                raise ValueError(f"--labels-per-class {n}: class {self.class_names[c]!r} has only {len(idx)} "
                                 f"training images")
            keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
        keep = torch.cat(keep).sort().values  # (num_classes * n,) indices into the full train split
        s = self.splits["train"]
        sub = (s[0][keep], s[1][keep]) if isinstance(s, tuple) else s.subset(keep.tolist())
        return dataclasses.replace(self, splits={**self.splits, "train": sub})

    def preprocess_info(self) -> dict:
        """Saved in checkpoints so ``predict`` prepares an image as training did."""
        info = {"img_size": self.img_size, "mean": list(self.mean), "std": list(self.std), "grey": self.grey,
                "crop_pct": 1.0 if self.name in ("digits", "moving-digits", "digit-scenes") else CROP_PCT}
        if self.num_frames:
            info["num_frames"] = self.num_frames
        return info


def build_data(spec: str | None, img_size: int, num_frames: int = 0) -> DataBundle:
    """``spec``: ``"digits"`` (default) or a folder holding ``train/`` and ``val/`` class subfolders; for
    pretraining also detection data without its labels: ``"digit-scenes[:N]"`` or a COCO folder
    (:func:`bettervit.detection.data.unlabeled_images`; one class, every label 0).

    With ``num_frames`` > 0 (video models) the data are clips of that many frames: ``"digits"`` / ``"moving-digits"``
    (default) / ``"moving-digits:N"`` (N training clips) for synthetic moving digits, or a folder whose class
    subfolders hold clips (see :mod:`bettervit.data.clips`)."""
    if num_frames:
        return build_clip_data(spec, img_size, num_frames)
    if spec in (None, "", "digits"):
        from .digits import CLASS_NAMES, load_digits_split

        train, val = load_digits_split(img_size)
        return DataBundle("digits", list(CLASS_NAMES), img_size, img_size, DIGITS_MEAN, DIGITS_STD, True,
                          {"train": train, "val": val})
    from ..detection.data import is_detection_spec

    if is_detection_spec(spec):  # detection images without their labels (MAE / MIM pretraining)
        from ..detection.data import unlabeled_images

        return unlabeled_images(spec, img_size)
    root = Path(spec).expanduser()
    classes = _folder_classes(root, spec, "'digits', 'digit-scenes[:N]', a folder with train/ and val/ or a COCO "
                              "folder", "<class>/")
    load_size = max(img_size, round(img_size / CROP_PCT))
    train = ImageFolderSplit(root / "train", classes, load_size, load_size)
    val = ImageFolderSplit(root / "val", classes, load_size, img_size)
    for name, s in (("train", train), ("val", val)):
        if len(s) == 0:
            raise ValueError(f"data directory {root / name} holds no readable images")
    return DataBundle(str(root), classes, img_size, load_size, IMAGENET_MEAN, IMAGENET_STD, False,
                      {"train": train, "val": val}, skipped=train.skipped + val.skipped)


def _folder_classes(root: Path, spec: str, expected: str, layout: str) -> list[str]:
    """The class names of a ``root/{train,val}/<class>/...`` data folder; a one-line ValueError (naming ``expected``
    and the ``layout`` under each split) when the folder, a split or the classes are missing."""
    if not root.is_dir():
        raise ValueError(f"data directory not found: {spec} (expected {expected})")
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise ValueError(f"data directory {root} has no {sub}/ subfolder (expected {root}/{{train,val}}/{layout})")
    classes = list_classes(root / "train")
    if not classes:
        raise ValueError(f"data directory {root / 'train'} has no class subfolders")
    return classes


def build_clip_data(spec: str | None, img_size: int, num_frames: int) -> DataBundle:
    """Clips of ``num_frames`` frames: synthetic moving digits or a clip folder (see :func:`build_data`)."""
    spec = spec or "moving-digits"
    name, _, count = spec.partition(":")
    if name in ("digits", "moving-digits") and not Path(spec).expanduser().is_dir():
        from .moving_digits import CLASS_NAMES, DEFAULT_TRAIN_CLIPS, MovingDigitsSplit, val_clips_for

        if count and not (count.isdigit() and int(count) >= 1):
            raise ValueError(f"--data {spec}: expected moving-digits or moving-digits:N with N >= 1 training clips")
        n = int(count) if count else DEFAULT_TRAIN_CLIPS
        train = MovingDigitsSplit("train", n, img_size, num_frames)
        val = MovingDigitsSplit("val", val_clips_for(n), img_size, num_frames)
        return DataBundle("moving-digits", list(CLASS_NAMES), img_size, img_size, DIGITS_MEAN, DIGITS_STD, True,
                          {"train": train, "val": val}, num_frames=num_frames)
    from .clips import ClipFolderSplit

    root = Path(spec).expanduser()
    classes = _folder_classes(root, spec, "'moving-digits' or a folder with train/ and val/ holding <class>/<clip> "
                              "frame folders or GIFs", "<class>/<clip>/")
    load_size = max(img_size, round(img_size / CROP_PCT))
    train = ClipFolderSplit(root / "train", classes, load_size, load_size, num_frames)
    val = ClipFolderSplit(root / "val", classes, load_size, img_size, num_frames)
    for name, s in (("train", train), ("val", val)):
        if len(s) == 0:
            raise ValueError(f"data directory {root / name} holds no clips (expected <class>/<clip>/ folders of frame "
                             f"images, or animated GIFs)")
    return DataBundle(str(root), classes, img_size, load_size, IMAGENET_MEAN, IMAGENET_STD, False,
                      {"train": train, "val": val}, skipped=train.skipped + val.skipped, num_frames=num_frames)
