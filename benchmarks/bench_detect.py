"""Detectors on the CPU: one Mask R-CNN on bettervit's backbone vs the same detector on timm's backbone with the same
weights (heads copied too), vs torchvision's ``maskrcnn_resnet50_fpn`` at the same input size; ``bettervit.optimize``
applied to the backbone trunk for inference; peak memory of the ViTDet EVA-02-B detector at 1024 x 1024, batch 1.

Rows: median seconds per training step (forward + backward of the summed losses on fixed synthetic targets) and per
inference call, the implementations run alternately (``--repeats`` each), fp32, random initialisation (speed does
not depend on training; the detections do, which is why every detector here shares its heads' weights).

    PYTHONPATH=. python benchmarks/bench_detect.py [--img-size 256] [--batch-size 2] [--repeats 5] [--threads 2]
                                                  [--only timm|torchvision|optimize|memory] [--memory-size 1024]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import bettervit
from bettervit.detection.backbones import FPNBackbone
from bettervit.detection.models import DetectorConfig, build_detector, detector_loss
from bettervit.features import FeatureGetter

HEADS = dict(fpn_channels=256, conv_dim=256, fc_dim=1024, mask_dim=256, roi_batch=128, num_classes=10)


def _targets(n: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        xy = torch.rand(4, 2, generator=g) * size * 0.6
        boxes = torch.cat([xy, xy + size * 0.1 + torch.rand(4, 2, generator=g) * size * 0.3], 1).clamp(max=size)
        masks = torch.zeros(4, size, size, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        out.append({"boxes": boxes, "labels": torch.randint(1, 11, (4,), generator=g), "masks": masks})
    return out


def _timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _step(model: nn.Module, images: list, targets: list) -> Callable[[], None]:
    def run() -> None:
        model.train()
        detector_loss(model(images, targets)).backward()
        model.zero_grad(set_to_none=True)
    return run


def _infer(model: nn.Module, images: list) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.no_grad():
            model(images)
    return run


def _timm_twin(name: str, size: int, out_indices: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """(bettervit FPNBackbone, timm FPNBackbone) with the same trunk weights (timm's random init copied into ours)."""
    import timm

    from bettervit import bench

    ours = bettervit.create_model(name, num_classes=0, img_size=size)
    ref = bench.timm_model(name, ours, img_size=size)
    feats = timm.create_model(name, features_only=True, out_indices=out_indices, img_size=size)
    sd = ref.state_dict()
    own = feats.state_dict()
    def source_key(k: str) -> str:  # timm's feature wrappers: "model." prefix (getter) or "stages_0." (hook list)
        k = k.removeprefix("model.")
        return k if k in sd else re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", k)

    feats.load_state_dict({k: sd[source_key(k)] for k in own}, strict=True)
    mine = FPNBackbone(FeatureGetter(ours, 4), HEADS["fpn_channels"])
    theirs = FPNBackbone(feats, HEADS["fpn_channels"])
    theirs.fpn.load_state_dict(mine.fpn.state_dict())
    for b in (mine, theirs):
        b.pretrained_cfg = dict(ours.pretrained_cfg)
    return mine, theirs


def _trunk_step(body: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        body.train()
        sum(f.float().mean() for f in body(x)).backward()
        body.zero_grad(set_to_none=True)
    return run


def _trunk_infer(body: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        body.eval()
        with torch.no_grad():
            body(x)
    return run


def vs_timm(size: int, batch: int, repeats: int) -> None:
    """Per backbone: the detector's training step and inference, bettervit vs timm trunk (and bettervit with
    ``bettervit.optimize`` on the trunk for inference); then the trunks alone on the same batch, which says how
    much of the detector's time a trunk speed-up can change."""
    images = [torch.rand(3, size, size) for _ in range(batch)]
    targets = _targets(batch, size)
    x = torch.stack(images)
    print(f"Mask R-CNN (4conv1fc / 4-conv heads, 256 ch), {size} px, batch {batch}: s per call (median)")
    for name, oi in (("hiera_tiny_224", (0, 1, 2, 3)), ("maxvit_tiny_tf_224", (1, 2, 3, 4))):
        mine, theirs = _timm_twin(name, size, oi)
        cfg = DetectorConfig(backbone=name, img_size=size, **HEADS)
        torch.manual_seed(0)
        a = build_detector(cfg, backbone=mine)
        b = build_detector(cfg, backbone=theirs)
        b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("backbone.body.")},
                          strict=False)
        fast = copy.deepcopy(a)
        fast.backbone.body = bettervit.optimize(fast.backbone.body)
        rows = (("detector train", {"bettervit": _step(a, images, targets), "timm": _step(b, images, targets)}),
                ("detector infer", {"bettervit": _infer(a, images), "timm": _infer(b, images),
                                    "bettervit+optimize": _infer(fast, images)}),
                ("trunk alone train", {"bettervit": _trunk_step(mine.body, x), "timm": _trunk_step(theirs.body, x)}),
                ("trunk alone infer", {"bettervit": _trunk_infer(mine.body, x), "timm": _trunk_infer(theirs.body, x),
                                       "bettervit+optimize": _trunk_infer(fast.backbone.body, x)}))
        for mode, fns in rows:
            t = _timed(fns, repeats)
            extra = (f"  optimize {t['bettervit+optimize']:.3f} ({t['timm'] / t['bettervit+optimize']:.2f}x)"
                     if "bettervit+optimize" in t else "")
            print(f"  {name:<20} {mode:<18}: bettervit {t['bettervit']:.3f}  timm {t['timm']:.3f}  "
                  f"ratio {t['timm'] / t['bettervit']:.2f}x{extra}", flush=True)


def vs_torchvision(size: int, batch: int, repeats: int) -> None:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    images = [torch.rand(3, size, size) for _ in range(batch)]
    targets = _targets(batch, size)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=11, min_size=size, max_size=size,
                               trainable_backbone_layers=5)
    ours = build_detector(DetectorConfig(backbone="hiera_tiny_224", img_size=size, **HEADS))
    for mode, fns in (("train", {"hiera_tiny": _step(ours, images, targets), "r50": _step(tv, images, targets)}),
                      ("infer", {"hiera_tiny": _infer(ours, images), "r50": _infer(tv, images)})):
        t = _timed(fns, repeats)
        print(f"  Mask R-CNN hiera_tiny_224 (ours) vs torchvision maskrcnn_resnet50_fpn, {mode}: "
              f"{t['hiera_tiny']:.3f} vs {t['r50']:.3f} s", flush=True)


def optimized_backbone(size: int, batch: int, repeats: int) -> None:
    """``bettervit.optimize(detector)`` (the trunk rewritten; what ``detect eval`` / ``predict`` run on the CPU) vs
    the plain detector, per family: inference time, the pyramid's largest difference and the detections' (heads
    untrained, so the detections are many low-score boxes: a strict check)."""
    images = [torch.rand(3, size, size) for _ in range(batch)]
    for name in ("hiera_tiny_224", "maxvit_tiny_tf_224", "eva02_tiny_patch14_224"):
        det = build_detector(DetectorConfig(backbone=name, img_size=size, **HEADS)).eval()
        fast = bettervit.optimize(det)
        with torch.no_grad():
            diff = max((x - y).abs().max().item() for x, y in
                       zip(det.backbone(images[0][None]).values(), fast.backbone(images[0][None]).values()))
            a, b = det(images), fast(images)
        same = all(len(p["boxes"]) == len(q["boxes"]) for p, q in zip(a, b))
        box_diff = max(((p["boxes"] - q["boxes"]).abs().max().item() for p, q in zip(a, b) if len(p["boxes"])),
                       default=0.0) if same else float("nan")
        t = _timed({"plain": _infer(det, images), "optimized": _infer(fast, images)}, repeats)
        print(f"  {name:<22} inference: plain {t['plain']:.3f}  optimize(detector) {t['optimized']:.3f} s "
              f"({t['plain'] / t['optimized']:.2f}x); pyramid max diff {diff:.1e}; same detection count {same}, "
              f"box max diff {box_diff:.1e} px", flush=True)


def _timm_eva_trunk(size: int) -> nn.Module:
    """timm's EVA-02-B at ``size`` with 16-px patches, in the place of our trunk inside ``ViTDetBackbone`` (which
    calls ``forward_intermediates``, timm's API; ``config`` gives it the two fields it reads). timm's Eva has no
    windowed attention: every block is global."""
    from types import SimpleNamespace

    import timm

    m = timm.create_model("eva02_base_patch14_224", pretrained=False, num_classes=0, img_size=size, patch_size=16)
    m.config = SimpleNamespace(patch_size=16, embed_dim=m.embed_dim)
    return m


def _peak_inference(det: nn.Module, x: list) -> tuple[float, float]:
    from bettervit.bench import PeakMemory

    with torch.no_grad():
        det(x)
        t = time.perf_counter()
        with PeakMemory(torch.device("cpu")) as mem:
            det(x)
    return time.perf_counter() - t, mem.mb


def vitdet_memory(size: int = 1024) -> None:
    """Peak memory of the ViTDet EVA-02-B Cascade Mask R-CNN (inference, batch 1): ours windowed (ViTDet's recipe:
    16-token windows, 4 global blocks), ours with every block global, and the same detector on timm's trunk (global
    attention, the only kind timm's Eva has)."""
    base = DetectorConfig(detector="cascade_mask_rcnn", backbone="eva02_base_patch14_224", img_size=size,
                          num_classes=80)
    x = [torch.rand(3, size, size)]
    print(f"ViTDet EVA-02-B Cascade Mask R-CNN, {size} x {size}, batch 1, inference (s, peak MB above the weights):")
    for label, cfg, timm_trunk in (("bettervit, windowed + 4 global (ViTDet)", base, False),
                                   ("bettervit, all 12 blocks global", dataclasses.replace(base, num_global=12), False),
                                   ("timm trunk (all global)", base, True)):
        det = build_detector(cfg).eval()
        if timm_trunk:
            det.backbone.body.backbone = _timm_eva_trunk(size)
        t, mb = _peak_inference(det, x)
        params = sum(p.numel() for p in det.parameters()) / 1e6
        print(f"  {label:<42} {t:6.1f} s  peak {mb:6.0f} MB  ({params:.0f} M parameters)", flush=True)
        del det


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["timm", "torchvision", "optimize", "memory"])
    ap.add_argument("--memory-size", type=int, default=1024, help="image side of the ViTDet EVA-02-B memory rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.only in (None, "timm"):
        vs_timm(args.img_size, args.batch_size, args.repeats)
    if args.only in (None, "torchvision"):
        vs_torchvision(args.img_size, args.batch_size, args.repeats)
    if args.only in (None, "optimize"):
        optimized_backbone(args.img_size, args.batch_size, args.repeats)
    if args.only in (None, "memory"):
        vitdet_memory(args.memory_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
