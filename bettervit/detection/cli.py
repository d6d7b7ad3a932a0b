"""``bettervit detect train | eval | predict | scenes``: the argparse part and the commands.

``train`` is the detection task (bettervit/detection/task.py) of the one training loop: run directory, metrics,
checkpoints, resume, torchrun, AMP as for every task. ``eval`` and ``predict`` rebuild the detector from a
checkpoint's ``meta["detector"]``. Bad input raises a one-line ValueError (the main CLI prints it, exit 2).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger("bettervit.detect")

#: detect train option -> RunConfig field (the rest keep their names)
_RENAMES = {"backbone": "model", "recipe": "det_recipe", "dist": "dist_mode"}
_NOT_CONFIG = ("command", "quiet", "resume", "overwrite", "detect_command")


def _types():
    from .. import cli

    return cli._int_at_least, cli._POS_FLOAT, cli._NONNEG_FLOAT, cli._UNIT, cli._pair, cli._float_in


def _add_train_options(p: argparse.ArgumentParser) -> None:
    at_least, pos, nonneg, unit, pair, _ = _types()
    S = argparse.SUPPRESS
    p.add_argument("--detector", choices=["mask_rcnn", "cascade_mask_rcnn", "rt_detr"], default=None,
                   help="Mask R-CNN (Faster R-CNN when the data has no masks), Cascade Mask R-CNN or RT-DETRv2 "
                        "(boxes only) (default: the recipe's, else mask_rcnn)")
    p.add_argument("--backbone", default=None, help="an image model of `bettervit models` (EVA-02 / EVA as ViTDet, "
                                                    "MaxViT / Hiera / HieraDet with an FPN); required")
    p.add_argument("--data", default=None, help="'digit-scenes' (default, embedded; 'digit-scenes:N' for N train "
                                                "scenes) or a COCO folder in COCO 2017's layout")
    p.add_argument("--img-size", type=at_least(32), default=None,
                   help="canvas side, a multiple of 32 (default: the recipe's; digit_scenes 128, COCO recipes 1024)")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="detection preset (heads, anchors, settings; list: --recipe list; default digit_scenes for "
                        "the scenes, vitdet_mask_rcnn_b for COCO folders)")
    p.add_argument("--epochs", type=at_least(1), default=None, help="number of epochs (default: the recipe's, else 12)")
    p.add_argument("--batch-size", type=at_least(1), default=None, help="images per step per process (default 8)")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="backbone weights: timm / official file or hub id, a bettervit run's checkpoint, an MAE / "
                        "MIM pretraining last.pt")
    p.add_argument("--output", default=None, metavar="RUN_DIR", help="run directory (default runs/detect_<backbone>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=pos, default=None,
                   help="peak learning rate (default: the recipe's, scaled to the batch)")
    g.add_argument("--weight-decay", type=nonneg, default=None)
    g.add_argument("--layer-decay", type=_types()[5](0, 1, lo_open=True), default=None,
                   help="layer-wise LR decay of the trunk (ViTDet: B 0.7, L 0.8, H 0.9; default 1: off)")
    g.add_argument("--warmup-epochs", type=nonneg, default=None)
    g.add_argument("--sched", choices=["cosine", "linear", "step", "constant"], default=None)
    g.add_argument("--clip-grad", type=nonneg, default=None)
    g.add_argument("--accum-steps", type=at_least(1), default=None)
    g.add_argument("--ema-decay", type=_types()[5](0, 0.99999), default=None)
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None)
    g.add_argument("--grad-checkpointing", action="store_true", default=None)
    g.add_argument("--drop-path", type=unit, default=None, help="trunk stochastic depth (ViTDet-B 0.1)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--eval-every", type=at_least(1), default=None, metavar="N")
    a = p.add_argument_group("augmentation")
    a.add_argument("--hflip", type=unit, default=None, help="horizontal flip probability (digit scenes: 0)")
    a.add_argument("--lsj-scale", type=pair(float, "MIN,MAX"), default=None,
                   help="large-scale jitter scale range (ViTDet: 0.1,2.0; digit scenes 0.8,1.25)")
    m = p.add_argument_group("machinery")
    m.add_argument("--device", default=None, help="auto, cpu or cuda")
    m.add_argument("--dist", choices=["ddp", "fsdp"], default=None, help="under torchrun (default ddp)")
    m.add_argument("--workers", type=at_least(0), default=None, help="data loading processes (default 0)")
    m.add_argument("--threads", type=at_least(1), default=None, help="CPU threads for torch")
    m.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    m.add_argument("--stop-after", type=at_least(1), default=None, help=S)


def _add_no_optimize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="on the CPU, run the plain backbone instead of bettervit.optimize's fused one")


def add_detect_parser(subparsers) -> argparse.ArgumentParser:
    """``detect`` and its commands, on the main CLI's subparsers (errors: one line, exit 2)."""
    at_least = _types()[0]
    det = subparsers.add_parser("detect", help="object detection / instance segmentation: train, eval, predict")
    sub = det.add_subparsers(dest="detect_command", required=True, parser_class=type(det), metavar="COMMAND")
    _add_train_options(sub.add_parser("train", help="train a detector (Mask R-CNN or Cascade Mask R-CNN)"))
    s = sub.add_parser("eval", help="COCO box / mask AP of a checkpoint; writes metrics.json, predictions.json")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", default=None, help="digit-scenes or a COCO folder (default: the checkpoint's data)")
    s.add_argument("--output", default=None, metavar="DIR", help="where to write (default <checkpoint dir>/eval)")
    s.add_argument("--overwrite", action="store_true", help="replace metrics.json / predictions.json in DIR")
    s.add_argument("--batch-size", type=at_least(1), default=8)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=at_least(1), default=None)
    _add_no_optimize(s)
    s = sub.add_parser("predict", help="draw detections on images (PNGs) and write them as JSON")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--output", default=None, metavar="DIR", help="where to write (default ./detections)")
    s.add_argument("--score-thresh", type=_types()[5](0, 1), default=0.5, help="draw detections above this score")
    s.add_argument("--overwrite", action="store_true", help="replace earlier outputs in DIR")
    s.add_argument("--device", default="auto")
    _add_no_optimize(s)
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s = sub.add_parser("scenes", help="write the embedded digit scenes as a COCO folder")
    s.add_argument("--output", required=True, metavar="DIR")
    s.add_argument("--img-size", type=at_least(32), default=128)
    s.add_argument("--n-train", type=at_least(1), default=None, help="train scenes (default 3000)")
    s.add_argument("--n-val", type=at_least(1), default=None, help="val scenes (default: a tenth, 16-300)")
    s.add_argument("--overwrite", action="store_true")
    return det


def cmd_detect(args: argparse.Namespace) -> int:
    return {"train": _train, "eval": _eval, "predict": _predict, "scenes": _scenes}[args.detect_command](args)


# ---------------------------------------------------------------------------------------------------------------
def _train_options(args: argparse.Namespace) -> dict:
    """RunConfig fields of this command line: recipe settings < the options given (the saved run on --resume)."""
    from .recipes import default_recipe, recipe_settings

    given = {_RENAMES.get(k, k): v for k, v in vars(args).items() if v is not None and k not in _NOT_CONFIG}
    given["task"] = "detect"
    if args.resume and "model" not in given:
        given["model"] = _saved_model(Path(given.get("output", "")))
    if not given.get("model"):
        raise ValueError("the following arguments are required: --backbone")
    given.setdefault("output", f"runs/detect_{given['model']}")
    if args.resume:  # the saved run's settings stand, except those given now
        return given
    if given.get("data") in (None, "digits"):
        given["data"] = "digit-scenes"
    given.setdefault("workers", 0)
    recipe = given.get("det_recipe") or default_recipe(given["data"], given.get("detector"))
    given["det_recipe"] = recipe
    return {**recipe_settings(recipe), **given}


def _saved_model(out: Path) -> str | None:
    import yaml

    f = out / "config.yaml"
    if not out.name or not f.is_file():
        raise ValueError(f"cannot resume: {f} not found (pass --output RUN_DIR)")
    return (yaml.safe_load(f.read_text()) or {}).get("config", {}).get("model")


def _train(args: argparse.Namespace) -> int:
    from ..train.config import merge_config
    from ..train.engine import run
    from ..train.rundir import read_metrics

    if args.recipe == "list":
        from .recipes import list_detection_recipes

        for name, r in list_detection_recipes().items():
            print(f"{name:<20} {r['description']}\n{'':<20} source: {r['source']}")
        return 0
    cfg = merge_config(_train_options(args), resume=args.resume)
    out = run(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [r for r in read_metrics(out) if "box_AP" in r]
        if rows:
            best = max(rows, key=lambda r: r["box_AP"])
            mask = f", mask AP {best['mask_AP']:.1f}" if "mask_AP" in best else ""
            print(f"best box AP {best['box_AP']:.1f}{mask} (epoch {best['epoch']}); metrics.json and "
                  f"predictions.json (last evaluation) in {out}")
        print(f"run directory: {out}")
    return 0


def load_detector(path: str | os.PathLike, device: str = "auto", optimize: bool = False):
    """(detector in eval mode on its device, checkpoint meta) from a ``detect train`` checkpoint; with ``optimize``
    on the CPU its trunk goes through ``bettervit.optimize`` (same detections to float rounding; the trunk runs
    1.2-1.5x faster, the whole detector, whose RoI heads dominate, about 1.02x: benchmarks/README.md)."""
    from ..train.checkpoint import load_checkpoint
    from ..train.distributed import resolve_device
    from .models import DetectorConfig, build_detector

    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta") or {}
    if not meta.get("detector") or "model" not in ckpt:
        raise ValueError(f"{path} is not a bettervit detection checkpoint (no meta['detector']); "
                         "expected best.pt / last.pt of `bettervit detect train`")
    model = build_detector(DetectorConfig.from_dict(meta["detector"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit its detector config ({str(e).splitlines()[0]})") from e
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if optimize and dev.type == "cpu":
        from .. import optimize as optimize_model

        model = optimize_model(model, inplace=True)
    return model, meta


def _fresh_outputs(out: Path, names: list[str], overwrite: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out / existing[0]} exists; choose another --output or pass --overwrite")


def _eval(args: argparse.Namespace) -> int:
    import torch

    from ..train.distributed import DistInfo
    from .data import build_detection_data
    from .evaluate import STAT_NAMES, write_metrics
    from .task import evaluate_detector

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output) if args.output else Path(args.checkpoint).resolve().parent / "eval"
    _fresh_outputs(out, ["metrics.json", "predictions.json"], args.overwrite)
    model, meta = load_detector(args.checkpoint, args.device, optimize=args.optimize)
    det, pre = meta["detector"], meta.get("preprocess") or {}
    data = build_detection_data(args.data or pre.get("data"), int(det["img_size"]))
    if data.num_classes != det["num_classes"]:
        raise ValueError(f"{args.data}: {data.num_classes} classes, but the checkpoint's detector has "
                         f"{det['num_classes']}")
    info = DistInfo(device=next(model.parameters()).device)
    metrics, results = evaluate_detector(model, data, info, args.batch_size, int(det["img_size"]))
    write_metrics(out, metrics, results)
    for prefix in ("box", "mask"):
        if f"{prefix}_AP" in metrics:
            print(f"{prefix:>4}: " + "  ".join(f"{n} {metrics[f'{prefix}_{n}']:.1f}" for n in STAT_NAMES))
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.json'}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict import predict_images

    out = Path(args.output or "detections")
    written = predict_images(args.checkpoint, [Path(p) for p in args.images], out, args.score_thresh,
                             args.device, args.overwrite, optimize=args.optimize)
    print(f"wrote {len(written)} image(s) and {out / 'predictions.json'}")
    return 0


def _scenes(args: argparse.Namespace) -> int:
    from .scenes import DEFAULT_TRAIN_SCENES, write_coco_folder

    out = write_coco_folder(args.output, img_size=args.img_size, n_train=args.n_train or DEFAULT_TRAIN_SCENES,
                            n_val=args.n_val, overwrite=args.overwrite)
    print(f"wrote the digit scenes as a COCO folder: {out}")
    return 0


__all__ = ["add_detect_parser", "cmd_detect", "load_detector"]
