"""The embedded default for video: synthetic *moving digits* clips (in the spirit of Moving MNIST, Srivastava et al.,
ICML 2015), drawn from scikit-learn's handwritten digits so nothing is downloaded.

A clip is ``num_frames`` grey frames of ``img_size`` pixels (repeated to 3 channels, like the image digits). It
holds one or two digits, each an 8x8 digit image enlarged to about ``img_size * 3 / 8`` pixels, moving with a
constant velocity and bouncing off the borders (position reflected, velocity negated); overlapping digits take the
brighter pixel. The label is the class of the first digit. Every clip is a pure function of (split, index): digit
images come from the fixed train / val split of :mod:`bettervit.data.digits`, positions and velocities from a
generator seeded with (split seed, index), so clips are rendered on the fly (no memory for the set) and identical on
every machine and in every worker process.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .digits import CLASS_NAMES

#: clips per split of the default set (``moving-digits``); ``moving-digits:N`` asks for N training clips
DEFAULT_TRAIN_CLIPS = 1024
SPLIT_SEEDS = {"train": 11, "val": 23}


def val_clips_for(n_train: int) -> int:
    """Validation clips for ``n_train`` training clips: a fifth, at least 8."""
    return max(8, n_train // 5)


class MovingDigitsSplit(torch.utils.data.Dataset):
    """One split: item ``i`` is (uint8 clip (3, T, S, S), label). ``samples`` lists (name, label) like an image
    folder's, so labels are known without rendering."""

    def __init__(self, split: str, n_clips: int, img_size: int, num_frames: int) -> None:
        from .digits import _split_indices

        from sklearn.datasets import load_digits

        d = load_digits()
        tr, va = _split_indices(d.target)
        idx = tr if split == "train" else va
        self.img_size, self.num_frames, self.seed = img_size, num_frames, SPLIT_SEEDS[split]
        self.sprite = max(4, round(img_size * 3 / 8))  # digit side in pixels
        digits = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
        sprites = F.interpolate(digits, size=(self.sprite, self.sprite), mode="bilinear", align_corners=False)
        self.sprites = sprites[:, 0].clamp(0, 1).numpy()  # (N, s, s)
        self.digit_labels = d.target[idx].astype(np.int64)
        self.samples: list[tuple[str, int]] = []
        self._plans = [self._plan(i) for i in range(n_clips)]
        self.samples = [(f"moving-digits/{split}/{i}", int(self.digit_labels[p[0][0]])) for i, p in enumerate(self._plans)]
        self.skipped = 0

    def _plan(self, i: int) -> list[tuple[int, float, float, float, float]]:
        """Per digit: (digit image index, y0, x0, vy, vx), from a generator seeded by (split, i)."""
        rng = np.random.default_rng([self.seed, i])
        free = self.img_size - self.sprite
        n = 1 + int(rng.random() < 0.5)
        plan = []
        for _ in range(n):
            k = int(rng.integers(len(self.sprites)))
            y0, x0 = rng.uniform(0, free, size=2)
            speed = rng.uniform(0.5, 1.5) * self.img_size / 16  # pixels per frame
            angle = rng.uniform(0, 2 * np.pi)
            plan.append((k, y0, x0, speed * np.sin(angle), speed * np.cos(angle)))
        return plan

    def subset(self, indices) -> "MovingDigitsSplit":
        out = object.__new__(MovingDigitsSplit)
        out.__dict__.update(self.__dict__)
        out._plans = [self._plans[i] for i in indices]
        out.samples = [self.samples[i] for i in indices]
        return out

    def __len__(self) -> int:
        return len(self._plans)

    def render(self, i: int) -> Tensor:
        """uint8 (3, T, S, S): the clip's frames."""
        S, s, T = self.img_size, self.sprite, self.num_frames
        free = S - s
        clip = np.zeros((T, S, S), dtype=np.float32)
        for k, y0, x0, vy, vx in self._plans[i]:
            for t in range(T):
                y, x = bounce(y0 + vy * t, free), bounce(x0 + vx * t, free)
                yi, xi = int(round(y)), int(round(x))
                np.maximum(clip[t, yi : yi + s, xi : xi + s], self.sprites[k], out=clip[t, yi : yi + s, xi : xi + s])
        x = torch.from_numpy((clip * 255).round().astype(np.uint8))  # (T, S, S)
        return x[None].expand(3, -1, -1, -1).contiguous()  # (3, T, S, S)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.render(i), self.samples[i][1]


def bounce(p: float, free: float) -> float:
    """Position after bouncing between 0 and ``free``: the straight path folded back at the borders."""
    if free <= 0:
        return 0.0
    p = abs(p) % (2 * free)
    return 2 * free - p if p > free else p


__all__ = ["MovingDigitsSplit", "CLASS_NAMES", "DEFAULT_TRAIN_CLIPS", "val_clips_for", "bounce"]
