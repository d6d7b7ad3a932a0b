"""Augmentation on the device, a whole batch at a time, with kornia.

Batches arrive as uint8 (B, 3, H, W); ``DeviceAugment`` returns normalised float images at the model's input size
and, for training, soft targets (label smoothing, mixup/cutmix). The defaults depend on the data: handwritten
digits get a mild random resized crop only (a flipped 2 or a 7 is not a digit), image folders the usual ImageNet
recipe (random resized crop, horizontal flip, RandAugment).

kornia's mixed-label convention, checked by the tests: mixup returns rows (y_a, y_b, lam) with the image
``(1 - lam) * x_a + lam * x_b``; cutmix (``use_correct_lambda=True``) returns lam as the *kept* share of ``x_a``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: tuple[int, int] | None = (2, 9)  # (number of ops, magnitude 0..30), None = off
    mixup: float = 0.0  # probability of mixing a batch with mixup (0 = off)
    cutmix: float = 0.0  # probability of mixing a batch with cutmix (0 = off)
    label_smoothing: float = 0.1

    @classmethod
    def for_data(cls, data_name: str) -> "AugmentConfig":
        if data_name in ("digits", "moving-digits"):
            return cls(crop_scale=(0.7, 1.0), crop_ratio=(0.85, 1.18), hflip=0.0, randaugment=None, label_smoothing=0.1)
        if data_name == "digit-scenes":  # pretraining on the scenes: crops that keep whole digits, no flips
            return cls(crop_scale=(0.35, 1.0), hflip=0.0, randaugment=None)
        return cls()


class DeviceAugment(nn.Module):
    def __init__(self, cfg: AugmentConfig, img_size: int, mean, std, num_classes: int) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.cfg, self.img_size, self.num_classes = cfg, img_size, num_classes
        ops: list[nn.Module] = [
            K.RandomResizedCrop((img_size, img_size), scale=cfg.crop_scale, ratio=cfg.crop_ratio)
        ]
        if cfg.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
        # clips (B, C, T, H, W): the geometric ops only, applied to (B, C*T, H, W) so every frame of a clip gets the
        # same crop and flip (the ops treat channels alike); no RandAugment / mixup / cutmix for video
        self.clip_ops = nn.Sequential(*ops)
        if cfg.randaugment is not None:
            ops.append(K.auto.RandAugment(n=cfg.randaugment[0], m=cfg.randaugment[1]))
        self.train_ops = nn.Sequential(*ops)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.normalize = K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))
        self.mixup = K.RandomMixUpV2(p=1.0, data_keys=["input", "class"]) if cfg.mixup > 0 else None
        self.cutmix = (
            K.RandomCutMixV2(p=1.0, data_keys=["input", "class"], use_correct_lambda=True) if cfg.cutmix > 0 else None
        )

    def soft_targets(self, y: Tensor) -> Tensor:
        n, s = self.num_classes, self.cfg.label_smoothing
        return F.one_hot(y, n).float() * (1 - s) + s / n  # (B, n)

    @torch.no_grad()
    def train_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images, int labels -> normalised images (B, 3, S, S), soft targets (B, num_classes). Clips
        (B, 3, T, H, W) -> (B, 3, T, S, S): one random crop / flip per clip."""
        if x.ndim == 5:
            B, C, T, H, W = x.shape
            z = self.clip_ops(x.float().div(255).reshape(B, C * T, H, W))  # (B, C*T, S, S)
            return self._normalize_clips(z.reshape(B, C, T, *z.shape[-2:])), self.soft_targets(y)
        x = self.train_ops(x.float() / 255)
        x = self.normalize(x)
        target = self.soft_targets(y)
        u = float(torch.rand(()))  # decides which mix (if any) this batch gets
        if self.mixup is not None and u < self.cfg.mixup:
            x, lab = self.mixup(x, y)  # lab: (B, 3) = y_a, y_b, lam (share of x_b)
            target = mixed_soft_target(lab, self.num_classes, self.cfg.label_smoothing, share_of_b=True)
        elif self.cutmix is not None and u >= 1 - self.cfg.cutmix:
            x, lab = self.cutmix(x, y)  # lab: (1, B, 3) = y_a, y_b, lam (share of x_a)
            target = mixed_soft_target(lab[0], self.num_classes, self.cfg.label_smoothing, share_of_b=False)
        return x, target

    def _normalize_clips(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) in [0, 1]
        return (x - self.mean.view(1, -1, 1, 1, 1)) / self.std.view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def eval_batch(self, x: Tensor) -> Tensor:
        if x.ndim == 5:  # clips: every frame resized to img_size if needed
            B, C, T, H, W = x.shape
            z = x.float().div(255)
            if (H, W) != (self.img_size, self.img_size):
                z = F.interpolate(z.reshape(B, C * T, H, W), size=(self.img_size, self.img_size), mode="bilinear",
                                  align_corners=False).reshape(B, C, T, self.img_size, self.img_size)
            return self._normalize_clips(z)
        x = x.float() / 255
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return self.normalize(x)


def mixed_soft_target(lab_rows: Tensor, num_classes: int, smoothing: float, share_of_b: bool) -> Tensor:
    """Soft targets from kornia's (y_a, y_b, lam) rows; ``share_of_b`` tells which side lam weights."""
    a = F.one_hot(lab_rows[:, 0].long(), num_classes).float()
    b = F.one_hot(lab_rows[:, 1].long(), num_classes).float()
    lam = lab_rows[:, 2:3]
    t = (1 - lam) * a + lam * b if share_of_b else lam * a + (1 - lam) * b
    return t * (1 - smoothing) + smoothing / num_classes
