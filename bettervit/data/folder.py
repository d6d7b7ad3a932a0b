"""User data: an image folder ``DIR/{train,val}/<class name>/<image>``, decoded with Pillow.

Every image is resized so its shorter side is ``load_size`` and centre-cropped to a ``load_size`` square, so batches
stack; the random crop to the model's input happens later on the device (``bettervit.data.augment``). Files that are
not images, or that Pillow cannot open, are skipped and counted rather than stopping the run.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def decode_image(path: str | os.PathLike, load_size: int, crop_size: int | None = None, grey: bool = False) -> Tensor:
    """Pillow-decode one image -> uint8 (3, crop, crop): shorter side resized to load_size, centre crop."""
    from PIL import Image

    crop_size = crop_size or load_size
    with Image.open(path) as im:
        im = im.convert("L").convert("RGB") if grey else im.convert("RGB")
        w, h = im.size
        scale = load_size / min(w, h)
        nw, nh = max(crop_size, round(w * scale)), max(crop_size, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - crop_size) // 2, (nh - crop_size) // 2
        im = im.crop((left, top, left + crop_size, top + crop_size))
        arr = np.asarray(im, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def subset_of(split, indices: Sequence[int]):
    """A shallow copy of a folder split (anything with a ``samples`` list) holding only the samples at ``indices``;
    every other attribute (classes, sizes, skip count) is shared."""
    out = object.__new__(type(split))
    out.__dict__.update(split.__dict__)
    out.samples = [split.samples[i] for i in indices]
    return out


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split of an image folder. ``skipped`` counts files that were not readable images."""

    def __init__(self, split_dir: Path, class_names: Sequence[str], load_size: int, crop_size: int) -> None:
        self.load_size, self.crop_size = load_size, crop_size
        self.samples: list[tuple[str, int]] = []
        self.skipped = 0
        index = {c: i for i, c in enumerate(class_names)}
        for c in list_classes(split_dir):
            if c not in index:
                raise ValueError(f"class folder {split_dir / c} is not among the training classes ({len(index)})")
            for f in sorted((split_dir / c).rglob("*")):
                if f.is_file():
                    self._add(f, index[c])
        if self.skipped:
            log.warning("%s: skipped %d unreadable or non-image file(s)", split_dir, self.skipped)

    @classmethod
    def from_files(cls, files: Sequence[Path], load_size: int, crop_size: int, where: Path | str = "",
                   label: int = 0) -> "ImageFolderSplit":
        """A split of the given image files, all with ``label`` (unlabelled images for pretraining); missing or
        unreadable files are skipped and counted (logged once, naming ``where``)."""
        out = object.__new__(cls)
        out.load_size, out.crop_size = load_size, crop_size
        out.samples, out.skipped = [], 0
        for f in files:
            out._add(Path(f), label)
        if out.skipped:
            log.warning("%s: skipped %d missing, unreadable or non-image file(s)", where, out.skipped)
        return out

    def _add(self, f: Path, label: int) -> None:
        """Keep ``f`` if it is a readable image (its header only is read: cheap, and catches non-images with an image
        suffix), else count it as skipped."""
        from PIL import Image, UnidentifiedImageError

        if f.suffix.lower() not in IMAGE_SUFFIXES:
            self.skipped += 1
            return
        try:
            with Image.open(f) as im:
                im.size  # noqa: B018
        except (OSError, UnidentifiedImageError, ValueError):
            self.skipped += 1
            return
        self.samples.append((str(f), label))

    def subset(self, indices: Sequence[int]) -> "ImageFolderSplit":
        """A copy holding only the samples at ``indices`` (same classes, sizes and skip count)."""
        return subset_of(self, indices)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        path, label = self.samples[i]
        try:
            return decode_image(path, self.load_size, self.crop_size), label
        except Exception as e:  # noqa: BLE001 - a truncated file must not stop a long run
            log.warning("skipping %s: %s", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None


def collate_skip_none(items: list) -> tuple[Tensor, Tensor]:
    items = [it for it in items if it is not None]
    if not items:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


def iterate_folder(ds: ImageFolderSplit, indices: Sequence[int], batch_size: int, workers: int) -> Iterator:
    batches = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=workers, collate_fn=collate_skip_none, persistent_workers=False
    )
    for x, y in loader:
        if len(y):
            yield x, y
