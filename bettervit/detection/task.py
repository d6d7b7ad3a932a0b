"""The detection task (``bettervit detect train``) on the training loop's task interface (train/tasks/base.py).

- data: :func:`bettervit.detection.data.build_detection_data` (the embedded digit scenes or a COCO folder); a batch
  is ``(images, targets)``, opaque to the loop;
- model: :func:`bettervit.detection.models.build_detector` from the run's recipe (``--recipe``, default
  ``digit_scenes`` for the scenes), ``--detector``, the backbone ``--model`` and the data's class count; ``--init``
  weights go into the backbone trunk (a timm / official file or hub id, a bettervit classification run's
  checkpoint, an MAE / MIM pretraining ``last.pt``: whatever ``create_model(pretrained=...)`` reads);
- training augmentation (in ``to_device``, so the loop's per-epoch seeding fixes it): horizontal flip (``--hflip``)
  and large-scale jitter (``--lsj-scale``) from :mod:`bettervit.detection.transforms`;
- loss: the sum of torchvision's named losses; their means since the last evaluation go into the metrics row as
  ``loss_<name>``;
- evaluation: COCO's protocol on the val split (12 box + 12 mask numbers, percent), ``metrics.json`` and
  ``predictions.json`` written into the run directory; best.pt follows ``box_AP``.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..train import distributed
from ..train.config import DEFAULTS
from ..train.precision import autocast
from ..train.tasks.base import Task

if TYPE_CHECKING:
    from ..train.config import RunConfig
    from .data import DetectionData
    from .models import DetectorConfig

log = logging.getLogger("bettervit.train")

#: digit scenes: a 10-minute CPU run (chosen by measurement, benchmarks/README.md "Detection")
DETECT_EPOCHS = 12


def detector_config(cfg: "RunConfig", num_classes: int, masks: bool) -> "DetectorConfig":
    """The DetectorConfig of a run: the recipe's detector fields, then the run's options on top."""
    from .models import DetectorConfig
    from .recipes import default_recipe, get_recipe

    recipe = get_recipe(cfg.det_recipe or default_recipe(cfg.data))
    fields = dict(recipe["detector"])
    fields.update(backbone=cfg.model, num_classes=num_classes, masks=masks)
    if cfg.detector:
        fields["detector"] = cfg.detector
    fields["masks"] = masks and fields.get("detector") != "rt_detr"  # RT-DETR: boxes only
    if cfg.img_size:
        fields["img_size"] = cfg.img_size
    if cfg.drop_path is not None:
        fields["backbone_overrides"] = {"drop_path_rate": cfg.drop_path}
    return DetectorConfig(**fields)


def run_img_size(cfg: "RunConfig") -> int:
    from .recipes import default_recipe, get_recipe

    return int(cfg.img_size or get_recipe(cfg.det_recipe or default_recipe(cfg.data))["detector"].get("img_size", 1024))


class DetectionTask(Task):
    name = "detect"
    best_metric = "box_AP"
    best_key = "best_box_AP"
    run_files = ("metrics.json", "predictions.json")

    def __init__(self, cfg: "RunConfig") -> None:
        super().__init__(cfg)
        self.det_cfg: DetectorConfig | None = None
        self.loss_sums: dict[str, float] = {}
        self.loss_count = 0

    # --- before anything is written -----------------------------------------------------------------------------
    def validate(self, cfg: "RunConfig") -> None:
        from ..factory import get_entry
        from .models import DETECTORS
        from .recipes import get_recipe

        if not cfg.model:
            raise ValueError("detect train needs --backbone (an image model, see `bettervit models`)")
        if getattr(get_entry(cfg.model).config(), "num_frames", 0):  # unknown names: one line with close matches
            raise ValueError(f"{cfg.model} is a video model; detection needs an image model")
        if cfg.detector is not None and cfg.detector not in DETECTORS:
            raise ValueError(f"--detector must be one of {', '.join(DETECTORS)}, got {cfg.detector!r}")
        if cfg.det_recipe is not None:
            get_recipe(cfg.det_recipe)
        if cfg.img_size is not None and cfg.img_size % 32:
            raise ValueError(f"--img-size must be a multiple of 32 for detection, got {cfg.img_size}")
        if cfg.lsj_scale is not None and not 0 < cfg.lsj_scale[0] <= cfg.lsj_scale[1]:
            raise ValueError(f"--lsj-scale must be MIN,MAX with 0 < MIN <= MAX, got {cfg.lsj_scale}")
        if cfg.linear_probe or cfg.labels_per_class:
            raise ValueError("--linear-probe and --labels-per-class are for classification, not detect")

    def defaults(self, cfg: "RunConfig", n_train: int) -> dict[str, Any]:
        return {"epochs": DETECT_EPOCHS, "lr": DEFAULTS["finetune_lr"] if cfg.init else DEFAULTS["scratch_lr"],
                "weight_decay": DEFAULTS["weight_decay"], "layer_decay": 1.0, "hflip": 0.0, "lsj_scale": (1.0, 1.0)}

    def resolve_defaults(self, cfg: "RunConfig", n_train: int, world: int = 1) -> None:
        if cfg.batch_size is None:
            cfg.batch_size = 8  # detection images are large and many RoIs each: small batches (as ViTDet's 1-2 per GPU)
        super().resolve_defaults(cfg, n_train, world)

    def build_data(self, cfg: "RunConfig", info: "distributed.DistInfo") -> "DetectionData":
        from .data import build_detection_data

        return build_detection_data(cfg.data if cfg.data != "digits" else None, run_img_size(cfg))

    def build_model(self, cfg: "RunConfig", data: "DetectionData") -> nn.Module:
        from .models import build_detector

        self.det_cfg = detector_config(cfg, data.num_classes, data.has_masks)
        self.img_size = self.det_cfg.img_size
        return build_detector(self.det_cfg, pretrained=cfg.init or False)

    def grad_checkpoint_target(self, model: nn.Module) -> nn.Module:
        return model

    def describe(self, model: nn.Module, data: "DetectionData") -> dict[str, Any]:
        out = super().describe(model, data)
        out["detector"] = self.det_cfg.to_dict() if self.det_cfg else None
        return out

    def data_summary(self, data: "DetectionData") -> str:
        d = self.det_cfg
        return f"{d.detector if d else 'detector'}, {data.size('train')} train / {data.size('val')} val images"

    # --- per batch ----------------------------------------------------------------------------------------------
    def to_device(self, batch: tuple[list[Tensor], list[dict]], device: torch.device):
        """Training augmentation (flip, large-scale jitter), then float images in [0, 1] and targets on ``device``."""
        from .transforms import train_transform

        images, targets = batch
        x, targets, _ = train_transform(images, targets, self.img_size, tuple(self.cfg.lsj_scale),
                                        float(self.cfg.hflip or 0.0))
        x = x.to(device).float().div_(255)  # (B, 3, S, S)
        return list(x), [_target_to(t, device) for t in targets]

    def batch_len(self, batch) -> int:
        return len(batch[0])

    def loss(self, model: nn.Module, batch) -> Tensor:
        images, targets = batch
        losses = model(images, targets)
        for k, v in losses.items():
            self.loss_sums[k] = self.loss_sums.get(k, 0.0) + float(v.detach())
        self.loss_count += 1
        return torch.stack([v.float() for v in losses.values()]).sum()

    # --- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, data: "DetectionData", info: "distributed.DistInfo", cfg: "RunConfig",
                 out_dir: Path) -> dict:
        from .evaluate import write_metrics

        metrics, results = evaluate_detector(model, data, info, cfg.batch_size, self.img_size, cfg.amp, cfg.workers)
        row = {k: round(v / max(1, self.loss_count), 5) for k, v in self.loss_sums.items()}
        self.loss_sums, self.loss_count = {}, 0
        if info.is_main:
            write_metrics(out_dir, metrics, results)
        return {**metrics, **row}

    def epoch_summary(self, row: dict) -> str:
        if "box_AP" not in row:
            return ""
        mask = f"  mask AP {row['mask_AP']:.1f}" if "mask_AP" in row else ""
        return f"box AP {row['box_AP']:.1f} (AP50 {row['box_AP50']:.1f}, AP75 {row['box_AP75']:.1f}){mask}"

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"detector": self.det_cfg.to_dict() if self.det_cfg else None}


def _target_to(t: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()}


def _gather(obj: list, info: "distributed.DistInfo") -> list:
    """Every rank's list, concatenated in rank order (all ranks get it)."""
    if not info.enabled:
        return obj
    parts: list = [None] * info.world
    torch.distributed.all_gather_object(parts, obj)
    return [x for p in parts for x in p]


@torch.no_grad()
def predict_batches(model: nn.Module, data: "DetectionData", split: str, idx: list[int], batch_size: int,
                    img_size: int, device: torch.device, amp: str = "none", workers: int = 0):
    """Yield (outputs, targets, scales) for the images ``idx`` of ``split``: eval transform (longer side to
    ``img_size``, padded), the detector in eval mode, outputs on the CPU in network-input coordinates."""
    from .transforms import eval_transform

    for images, targets in data.batches(split, idx, batch_size, workers):
        x, _, scales = eval_transform(images, None, img_size)
        x = x.to(device).float().div_(255)
        with autocast(amp, device) if amp != "none" else contextlib.nullcontext():
            outs = model(list(x))
        outs = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outs]
        yield outs, targets, scales


def evaluate_detector(model: nn.Module, data: "DetectionData", info: "distributed.DistInfo", batch_size: int,
                      img_size: int, amp: str = "none", workers: int = 0, split: str = "val"
                      ) -> tuple[dict[str, float], list[dict]]:
    """COCO's 12 box (and 12 mask) numbers on ``split`` and the detections in COCO's results format; each rank
    predicts its shard, the results are gathered and every rank returns the same numbers."""
    from .evaluate import coco_evaluate, to_coco_results

    was_training = model.training
    model.eval()
    with_masks = data.has_masks and getattr(getattr(model, "config", None), "masks", True)  # rt_detr: boxes only
    idx = data.indices(split, 0, 0, info.rank, info.world, shuffle=False)
    results: list[dict] = []
    for outs, targets, scales in predict_batches(model, data, split, idx, batch_size, img_size, info.device, amp,
                                                 workers):
        if not with_masks:
            outs = [{k: v for k, v in o.items() if k != "masks"} for o in outs]
        results += to_coco_results(outs, targets, data.category_ids, scales)
    model.train(was_training)
    results = _gather(results, info)
    types = ("bbox", "segm") if with_masks else ("bbox",)
    return coco_evaluate(data.coco_gt(split), results, types), results
