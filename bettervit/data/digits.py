"""The embedded default data set: scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes).

The images are tiny and grey with values 0..16; we scale them to [0, 1], resize them once to the model's input with
bilinear interpolation and repeat the grey channel three times, so every backbone takes them unchanged. The split is
fixed (stratified, 20% validation, seed 0): 1,437 training and 360 validation images.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CLASS_NAMES = [str(i) for i in range(10)]
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: the same images land in val on every machine and numpy version."""
    rng = np.random.RandomState(SPLIT_SEED)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * VAL_FRACTION))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def resize_grey(images: Tensor, img_size: int) -> Tensor:
    """(N, 8, 8) floats in [0, 1] -> (N, 3, img_size, img_size) uint8, bilinear."""
    x = F.interpolate(images[:, None].float(), size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # (N, 1, S, S)
    return x.expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S)


def load_digits_split(img_size: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((train_images, train_labels), (val_images, val_labels)); images uint8 (N, 3, S, S), labels int64 (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)  # (1797, 8, 8) in [0, 1]
    labels = torch.from_numpy(d.target.astype(np.int64))
    tr, va = _split_indices(d.target)
    x = resize_grey(images, img_size)
    return (x[tr], labels[tr]), (x[va], labels[va])
