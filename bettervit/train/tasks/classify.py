"""Supervised classification (``bettervit train``): training from scratch or fine-tuning from ``--init``.

The model is ``create_model(name, pretrained=--init, num_classes=<the data's>)``; the loss soft cross-entropy on
the augmentation's soft targets (label smoothing, mixup / cutmix); evaluation top-1 / top-5 and the loss on the
validation split; best.pt follows ``val_top1``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import DataBundle
from ...data.augment import DeviceAugment
from .. import distributed
from ..config import DEFAULTS, supervised_epochs
from ..precision import autocast
from .common import ImageTask, model_overrides

if TYPE_CHECKING:
    from ..config import RunConfig


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against soft targets (B, classes), in float32; the batch mean."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def build_classifier(cfg: "RunConfig", num_classes: int, img_size: int) -> nn.Module:
    """``cfg.model`` with ``num_classes`` outputs at ``img_size``, from the ``--init`` weights if given."""
    from ... import create_model

    return create_model(cfg.model, pretrained=cfg.init or False, num_classes=num_classes, img_size=img_size,
                        **model_overrides(cfg))


class ClassifyTask(ImageTask):
    name = "classify"
    best_metric = "val_top1"

    def defaults(self, cfg: "RunConfig", n_train: int) -> dict[str, Any]:
        return {"epochs": supervised_epochs(n_train, cfg.batch_size),
                "lr": DEFAULTS["finetune_lr"] if cfg.init else DEFAULTS["scratch_lr"],
                "weight_decay": DEFAULTS["weight_decay"],
                "layer_decay": DEFAULTS["finetune_layer_decay"] if cfg.init else 1.0}

    def build_model(self, cfg: "RunConfig", data: DataBundle) -> nn.Module:
        return build_classifier(cfg, data.num_classes, data.img_size)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, target = self.aug.train_batch(*batch)
        return soft_cross_entropy(model(x), target)

    def evaluate(self, model: nn.Module, data: DataBundle, info: distributed.DistInfo, cfg: "RunConfig",
                 out_dir: Path) -> dict:
        res = evaluate_classifier(model, data, self.aug, info, cfg.batch_size, cfg, workers=cfg.workers)
        return {k: v for k, v in res.items() if k != "n"}

    def epoch_summary(self, row: dict) -> str:
        if "val_top1" not in row:
            return ""
        return (f"val_loss {row['val_loss']:.4f}  val_top1 {row['val_top1']:.2f}%  "
                f"val_top5 {row['val_top5']:.2f}%")


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data: DataBundle, aug: DeviceAugment, info: distributed.DistInfo,
                        batch_size: int, cfg: "RunConfig | None" = None, split: str = "val",
                        workers: int = 0) -> dict:
    """Validation loss and top-1 / top-5 accuracy (percent) and the sample count ``n``, summed over all ranks'
    shards; under ``cfg.amp`` autocast if ``cfg`` is given."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss, top1, top5, n
    k = min(5, data.num_classes)
    idx = data.indices(split, 0, 0, info.rank, info.world, shuffle=False)
    # every rank runs the same number of equal batches (FSDP gathers weights collectively in each forward):
    # pad the shorter shards with a repeat of their last sample and give the padding weight 0
    n_valid, per_rank = len(idx), -(-data.size(split) // info.world)
    idx = idx + [idx[-1] if idx else 0] * (per_rank - n_valid)
    seen = 0
    for x, y in data.batches(split, idx, batch_size, workers):
        x, y = aug.eval_batch(x.to(info.device)), y.to(info.device)
        w = (torch.arange(seen, seen + len(y), device=info.device) < n_valid).double()  # (B,) 0 on padding
        seen += len(y)
        with autocast(cfg.amp, info.device) if cfg else contextlib.nullcontext():
            logits = model(x)
        logits = logits.float()
        sums[0] += (F.cross_entropy(logits, y, reduction="none").double() * w).sum()
        topk = logits.topk(k, dim=-1).indices  # (B, k)
        sums[1] += ((topk[:, 0] == y).double() * w).sum()
        sums[2] += ((topk == y[:, None]).any(-1).double() * w).sum()
        sums[3] += w.sum()
    distributed.all_reduce_sum(sums, info)
    model.train(was_training)
    n = max(1.0, sums[3].item())
    return {"val_loss": sums[0].item() / n, "val_top1": 100 * sums[1].item() / n, "val_top5": 100 * sums[2].item() / n,
            "n": int(sums[3].item())}
