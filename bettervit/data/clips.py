"""User video data: a folder of short clips, ``DIR/{train,val}/<class name>/<clip>``, where a clip is either

- a subfolder of frame images (any Pillow format), in file-name order (``0001.png``, ``0002.png`` ...), or
- an animated GIF (its frames in order).

Each clip gives ``num_frames`` frames, taken evenly spaced over the clip (its first and last frame included; a clip
shorter than ``num_frames`` repeats frames), each resized and centre-cropped like the image folder's images
(:func:`bettervit.data.folder.decode_image`). Anything else in a class folder (stray files, empty or unreadable
clips) is skipped and counted, as the image folder does. Decoding video files (mp4 ...) would need a video library;
extract their frames first (e.g. ``ffmpeg -i clip.mp4 clip/%04d.png``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .folder import IMAGE_SUFFIXES, decode_image, list_classes, subset_of

log = logging.getLogger(__name__)


def frame_indices(n: int, num_frames: int) -> list[int]:
    """``num_frames`` indices evenly spaced over ``n`` frames (first and last included)."""
    return np.linspace(0, n - 1, num_frames).round().astype(int).tolist()


def _frames_of(clip: Path) -> list[Path] | None:
    """The frame files of a clip folder, sorted by name; None if it holds none."""
    frames = sorted(f for f in clip.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    return frames or None


class ClipFolderSplit(torch.utils.data.Dataset):
    """One split of a clip folder: item ``i`` is (uint8 clip (3, T, S, S), label), or None if it cannot be read."""

    def __init__(self, split_dir: Path, class_names: Sequence[str], load_size: int, crop_size: int,
                 num_frames: int) -> None:
        self.load_size, self.crop_size, self.num_frames = load_size, crop_size, num_frames
        self.samples: list[tuple[str, int]] = []
        self.skipped = 0
        index = {c: i for i, c in enumerate(class_names)}
        for c in list_classes(split_dir):
            if c not in index:
                raise ValueError(f"class folder {split_dir / c} is not among the training classes ({len(index)})")
            for f in sorted((split_dir / c).iterdir()):
                if f.name.startswith("."):
                    continue
                if (f.is_dir() and _frames_of(f)) or (f.is_file() and f.suffix.lower() == ".gif"):
                    self.samples.append((str(f), index[c]))
                else:
                    self.skipped += 1
        if self.skipped:
            log.warning("%s: skipped %d entries that are neither frame folders nor GIFs", split_dir, self.skipped)

    def subset(self, indices: Sequence[int]) -> "ClipFolderSplit":
        return subset_of(self, indices)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: str) -> Tensor:
        """uint8 (3, T, S, S) frames of one clip."""
        p = Path(path)
        if p.is_dir():
            files = _frames_of(p) or []
            if not files:
                raise ValueError(f"no frames in {p}")
            frames = [decode_image(files[i], self.load_size, self.crop_size) for i in frame_indices(len(files), self.num_frames)]
        else:
            from PIL import Image, ImageSequence

            with Image.open(p) as im:
                n = getattr(im, "n_frames", 1)
                want = frame_indices(n, self.num_frames)
                keep = {}
                for i, fr in enumerate(ImageSequence.Iterator(im)):
                    if i in want:
                        keep[i] = fr.convert("RGB").copy()
            frames = [_decode_pil(keep[i], self.load_size, self.crop_size) for i in want]
        return torch.stack(frames, dim=1)  # (3, T, S, S)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        path, label = self.samples[i]
        try:
            return self.load(path), label
        except Exception as e:  # noqa: BLE001 - a broken clip must not stop a long run
            log.warning("skipping %s: %s", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None


def _decode_pil(im, load_size: int, crop_size: int) -> Tensor:
    """A Pillow RGB frame -> uint8 (3, crop, crop), as :func:`decode_image` does for files."""
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    buf.seek(0)
    return decode_image(buf, load_size, crop_size)
