"""The baseline a user would pick today, trained like ours: Mask R-CNN on torchvision's ResNet-50-FPN
(``torchvision.models.detection.backbone_utils.resnet_fpn_backbone``, the body of ``maskrcnn_resnet50_fpn``) on the
embedded digit scenes, with the same heads, recipe (``digit_scenes``), schedule and evaluation as ``make
detect-demo``, so its box / mask AP and img/s stand beside the demo's (hiera_nano) row.

Differences from ``maskrcnn_resnet50_fpn`` kept on purpose: the ResNet trains from scratch (no ImageNet weights are
reachable offline, as for the bettervit runs it is compared with), so its BatchNorm layers train
(``torchvision.ops.FrozenBatchNorm2d``, the default, would freeze random statistics); heads, anchors and RoI
sampling are the ``digit_scenes`` recipe's (torchvision's COCO-sized heads cost ~11 s per step here, see
benchmarks/README.md). The run is the training engine's ``detect`` task with the backbone swapped
(``register_task``), so the run directory is the same as a ``bettervit detect train`` one.

    PYTHONPATH=. python benchmarks/bench_detect_r50.py [--scenes 1200] [--img-size 192] [--epochs 4] [--threads 2]
        [--output runs/detect_r50] [--compare runs/pretrain-pays/det_hiera_nano_scratch]
"""
from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

from torch import Tensor, nn

from bettervit.data import IMAGENET_MEAN, IMAGENET_STD
from bettervit.detection.task import DetectionTask, detector_config


class ResNet50FPN(nn.Module):
    """torchvision's ResNet-50 + FPN (levels "0"-"3" at strides 4-32, max-pooled "pool") with the attributes
    ``build_detector`` and the detector read (``out_channels``, ``strides``, ``roi_names``, ``pretrained_cfg``,
    ``trunk``, ``trunk_prefix``)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        self.net = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=nn.BatchNorm2d,
                                       trainable_layers=5)
        if out_channels != self.net.out_channels:  # the recipe's pyramid width (torchvision builds 256)
            from torchvision.ops import FeaturePyramidNetwork
            from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

            self.net.fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], out_channels, extra_blocks=LastLevelMaxPool())
            self.net.out_channels = out_channels
        self.out_channels = out_channels
        self.roi_names = ["0", "1", "2", "3"]
        self.strides = {"0": 4.0, "1": 8.0, "2": 16.0, "3": 32.0, "pool": 64.0}
        self.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    @property
    def trunk(self) -> nn.Module:
        return self.net.body

    @property
    def trunk_prefix(self) -> str:
        return "net.body."

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.net(x)


class ResNetDetectTask(DetectionTask):
    """The ``detect`` task whose backbone is :class:`ResNet50FPN` (``--backbone`` names it only in the run files)."""

    name = "detect_r50"

    def validate(self, cfg) -> None:  # DetectionTask's checks the backbone name against bettervit's registry
        if cfg.img_size is not None and cfg.img_size % 32:
            raise ValueError(f"--img-size must be a multiple of 32 for detection, got {cfg.img_size}")

    def build_model(self, cfg, data) -> nn.Module:
        from bettervit.detection.models import build_detector

        self.det_cfg = detector_config(cfg, data.num_classes, data.has_masks)
        self.img_size = self.det_cfg.img_size
        return build_detector(self.det_cfg, backbone=ResNet50FPN(self.det_cfg.fpn_channels))


def summary(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    img_s = sorted(r["img_per_s"] for r in rows)[len(rows) // 2]
    secs = sum(r["epoch_time_s"] for r in rows)
    return {"box": last["box_AP"], "box75": last["box_AP75"], "mask": last.get("mask_AP", float("nan")),
            "img_s": img_s, "train_s": secs}


def main(argv: list[str] | None = None) -> int:
    from bettervit.detection.recipes import recipe_settings
    from bettervit.train.config import merge_config
    from bettervit.train.engine import run
    from bettervit.train.tasks import register_task

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=1200)
    ap.add_argument("--img-size", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=Path("runs/detect_r50"))
    ap.add_argument("--compare", type=Path, nargs="*", default=[Path("runs/pretrain-pays/det_hiera_nano_scratch")],
                    help="finished `detect train` run directories to print beside it")
    a = ap.parse_args(argv)
    register_task(ResNetDetectTask.name, ResNetDetectTask)
    given = dict(task=ResNetDetectTask.name, model="tv_resnet50_fpn", data=f"digit-scenes:{a.scenes}",
                 img_size=a.img_size, epochs=a.epochs, threads=a.threads, output=str(a.output), workers=0,
                 det_recipe="digit_scenes", progress=False)
    cfg = merge_config({**recipe_settings("digit_scenes"), **given})
    resume = (a.output / "last.pt").exists()
    run(cfg, resume=resume, overwrite=not resume)
    params = sum(p.numel() for p in ResNet50FPN(64).net.body.parameters()) / 1e6
    print("\n| backbone (trunk params) | box AP / AP75 | mask AP | training img/s (median epoch) | training s |")
    print("|---|---|---|---|---|")
    for label, out in [(f"torchvision ResNet-50 ({params:.1f} M)", a.output)] + [(p.name, p) for p in a.compare]:
        if not (out / "metrics.jsonl").exists():
            print(f"| {label} | (no run in {out}) | | | |")
            continue
        s = summary(out)
        print(f"| {label} | {s['box']:.1f} / {s['box75']:.1f} | {s['mask']:.1f} | {s['img_s']:.1f} | "
              f"{s['train_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
