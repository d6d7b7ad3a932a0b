"""The ``bettervit`` command (also ``python -m bettervit``): models, train, eval, predict, pretrain, bench.

Bad input (an unknown model, a missing data folder, a bad option value, an unreadable checkpoint) prints one line
on stderr and exits with status 2, before anything is written. A run whose loss turns NaN/Inf exits with status 1.
Under ``torchrun`` every process runs the same command; only rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


class CliError(ValueError):
    """Bad input found by the CLI itself."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage block) and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


# ---------------------------------------------------------------------------------------------------------------
# Option types: each rejects a bad value with one line naming what was expected
# ---------------------------------------------------------------------------------------------------------------
def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


def _float_in(lo: float, hi: float, lo_open: bool = False):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not (lo < v if lo_open else lo <= v) or not v <= hi or v != v:
            raise argparse.ArgumentTypeError(f"expected a number in {'(' if lo_open else '['}{lo}, {hi}], got {s}")
        return v

    parse.__name__ = "float"
    return parse


def _pair(kind, what: str):
    def parse(s: str):
        try:
            a, b = (kind(t) for t in s.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        return a, b

    parse.__name__ = "pair"
    return parse


def _impl_list(s: str) -> list[str]:
    from .bench import IMPLS

    names = [t.strip() for t in s.split(",") if t.strip()]
    bad = [n for n in names if n not in IMPLS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(IMPLS)}, got {s!r}")
    return names


_POS_FLOAT = _float_in(0.0, float("inf"), lo_open=True)
_NONNEG_FLOAT = _float_in(0.0, float("inf"))
_UNIT = _float_in(0.0, 1.0)


def _bool(s: str) -> bool:
    if s.lower() in ("true", "1", "yes"):
        return True
    if s.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _add_run_options(p: argparse.ArgumentParser, pretrain: bool) -> None:
    """Options shared by train and pretrain. Defaults are None so a resumed run keeps its saved values; the help
    states the defaults ``bettervit.train.config`` fills in (``DEFAULTS``, ``RunConfig``)."""
    from .train.config import DEFAULTS as D
    from .train.config import RunConfig

    R, S = RunConfig(), argparse.SUPPRESS
    p.add_argument("--model", default=None, help="registered model name (see `bettervit models`); required")
    p.add_argument("--data", default=None,
                   help="'digits' (default: scikit-learn's 8x8 digits) or DIR with train/ and val/; video models: "
                        "'moving-digits[:N]' (default, synthetic clips) or DIR with train/ and val/ of <class>/<clip>"
                        + ("; detection images without labels: 'digit-scenes[:N]' or a COCO folder" if pretrain else ""))
    p.add_argument("--img-size", type=_int_at_least(8), default=None, help="input size (default: the model's)")
    p.add_argument("--num-frames", type=_int_at_least(1), default=None,
                   help="video models: frames per clip (default: the model's, e.g. 16)")
    epochs = (f"MAE {D['mae_epochs']}, MIM {D['mim_epochs']}" if pretrain else
              f"{D['epochs']}, more for fewer than {D['small_data']} training images")
    p.add_argument("--epochs", type=_int_at_least(1), default=None,
                   help=f"number of epochs (default: {epochs}; see docs/training.md)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help=f"images per step per process (default {D['batch_size']}, smaller for tiny training sets)")
    p.add_argument("--output", default=None, help="run directory (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="initial weights: a file or hub id create_model(pretrained=...) accepts (incl. MAE/MIM encoders)")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="a named fine-tuning preset (papers' hyper-parameters; list: --recipe list)")
    if not pretrain:
        p.add_argument("--labels-per-class", type=_int_at_least(1), default=None, metavar="N",
                       help="train on N labelled images per class (stratified subset fixed by --seed; val unchanged)")
        p.add_argument("--linear-probe", action="store_true", default=None,
                       help="freeze the encoder; train BatchNorm (no affine) + a linear classifier on pooled features")
        p.add_argument("--eval-every", type=_int_at_least(1), default=None, metavar="N",
                       help=f"evaluate every N epochs and at the last (default: about {D['evals_per_run']} "
                            f"evaluations per run)")
    g = p.add_argument_group("optimisation (defaults depend on the task: docs/training.md)")
    lr = (f"MAE {D['mae_lr']:g}, MIM {D['mim_lr']:g}" if pretrain else
          f"{D['scratch_lr']:g}; from --init {D['finetune_lr']:g}; linear probe {D['probe_lr']:g}")
    g.add_argument("--lr", type=_POS_FLOAT, default=None, help=f"peak learning rate (default {lr})")
    wd = "" if pretrain else f"; linear probe {D['probe_weight_decay']:g}"
    g.add_argument("--weight-decay", type=_NONNEG_FLOAT, default=None,
                   help=f"AdamW weight decay (default {D['weight_decay']:g}{wd})")
    ld = ("not used in pretraining (always 1: off)" if pretrain else
          f"default {D['finetune_layer_decay']:g} when fine-tuning from --init, else 1: off")
    g.add_argument("--layer-decay", type=_float_in(0, 1, lo_open=True), default=None,
                   help=f"layer-wise LR decay ({ld})")
    g.add_argument("--warmup-epochs", type=_NONNEG_FLOAT, default=None,
                   help=f"linear warmup length (default {100 * D['warmup_share']:g}%% of the epochs, "
                        f">= {D['min_warmup_epochs']:g})")
    g.add_argument("--sched", choices=["cosine", "linear", "step", "constant"], default=None,
                   help=f"learning-rate schedule after the warmup (default {R.sched})")
    g.add_argument("--clip-grad", type=_NONNEG_FLOAT, default=None,
                   help=f"max gradient norm, 0 = off (default {R.clip_grad:g})")
    g.add_argument("--accum-steps", type=_int_at_least(1), default=None,
                   help=f"gradient accumulation steps (default {R.accum_steps})")
    g.add_argument("--ema-decay", type=_float_in(0, 0.99999), default=None,
                   help=f"EMA of weights, e.g. 0.999 (0: off; default {R.ema_decay:g})")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None, help=f"autocast dtype (default {R.amp})")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--grad-checkpointing", action="store_true", default=None, help="recompute activations")
    g.add_argument("--drop-path", type=_UNIT, default=None, help="stochastic depth rate (default: the model's)")
    g.add_argument("--seed", type=int, default=None,
                   help=f"seed for init, data order and augmentation (default {R.seed})")
    a = p.add_argument_group("augmentation (defaults depend on the data and the task; docs/training.md)")
    a.add_argument("--crop-scale", type=_pair(float, "MIN,MAX"), default=None, help="random resized crop area")
    a.add_argument("--hflip", type=_UNIT, default=None, help="horizontal flip probability")
    if not pretrain:
        a.add_argument("--label-smoothing", type=_UNIT, default=None)
        a.add_argument("--randaugment", type=_pair(int, "N,M (ops, magnitude)"), default=None)
        a.add_argument("--no-randaugment", action="store_true", default=None)
        a.add_argument("--mixup", type=_UNIT, default=None, help="share of batches mixed with mixup")
        a.add_argument("--cutmix", type=_UNIT, default=None, help="share of batches mixed with cutmix")
    m = p.add_argument_group("machinery")
    m.add_argument("--device", default=None, help=f"auto, cpu or cuda (default {R.device})")
    m.add_argument("--dist", dest="dist_mode", choices=["ddp", "fsdp"], default=None,
                   help=f"under torchrun: DDP or FSDP2 fully_shard (default {R.dist_mode})")
    m.add_argument("--workers", type=_int_at_least(0), default=None,
                   help=f"image decoding processes (folders; default {R.workers})")
    m.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest for tiny models on busy machines)")
    m.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    m.add_argument("--stop-after", type=_int_at_least(1), default=None, help=S)  # tests: simulate a killed run


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bettervit", description="MaxViT, Hiera and EVA-02: train, evaluate, predict, pretrain, bench.")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    s = sub.add_parser("models", help="table of registered models with params and GMACs")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'hiera*'")

    s = sub.add_parser("train", help="supervised training or fine-tuning")
    _add_run_options(s, pretrain=False)

    s = sub.add_parser("pretrain", help="self-supervised pretraining: MAE (Hiera) or MIM (EVA-02)")
    s.add_argument("--method", choices=["mae", "mim"], required=True)
    _add_run_options(s, pretrain=True)
    s.add_argument("--mask-ratio", type=_float_in(0, 1, lo_open=True), default=None,
                   help="share of masked units / patches (default: the model's)")
    s.add_argument("--norm-pix-loss", type=_bool, default=None, metavar="true|false",
                   help="MAE: regress per-patch normalised pixels (default: the model's)")
    s.add_argument("--teacher", default=None, help="MIM: teacher model name")
    s.add_argument("--teacher-checkpoint", default=None, help="MIM: teacher weights")

    s = sub.add_parser("eval", help="top-1 / top-5 of a checkpoint on the digits or a folder's val/")
    s.add_argument("--model", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", default="digits")
    s.add_argument("--img-size", type=_int_at_least(8), default=None)
    s.add_argument("--batch-size", type=_int_at_least(1), default=64)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="on the CPU, run the plain model instead of bettervit.optimize's fused one")
    s.add_argument("--workers", type=_int_at_least(0), default=2)
    s.add_argument("--knn", type=_int_at_least(1), default=None, metavar="K",
                   help="also k-NN top-1 on pooled features (cosine, K neighbours) from the train split")
    s.add_argument("--labels-per-class", type=_int_at_least(1), default=None, metavar="N",
                   help="k-NN / pixel baselines: use N labelled train images per class (as train does)")
    s.add_argument("--seed", type=int, default=0, help="seed of the --labels-per-class subset (default %(default)s)")

    s = sub.add_parser("predict", help="top-k classes of images")
    s.add_argument("--model", required=True)
    s.add_argument("--checkpoint", default=None, help="a run checkpoint (default: the model's released weights)")
    s.add_argument("--topk", type=_int_at_least(1), default=5)
    s.add_argument("--img-size", type=_int_at_least(8), default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="on the CPU, run the plain model instead of bettervit.optimize's fused one")
    s.add_argument("images", nargs="+", metavar="IMAGE")

    s = sub.add_parser("bench", help="bettervit vs timm: img/s, peak memory, MFU (inference and training step)")
    s.add_argument("--model", required=True)
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None,
                   help="autocast dtype (default: bf16 on cuda, none on cpu)")
    s.add_argument("--compile", action="store_true", help="torch.compile the models (see --impls)")
    s.add_argument("--compile-mode", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    s.add_argument("--batch-size", type=_int_at_least(1), default=None, help="default 8 on cpu, 128 on cuda")
    s.add_argument("--img-size", type=_int_at_least(8), default=None)
    s.add_argument("--repeats", type=_int_at_least(1), default=10)
    s.add_argument("--warmup", type=_int_at_least(1), default=3)
    s.add_argument("--no-train", dest="train", action="store_false", help="inference only")
    s.add_argument("--impls", type=_impl_list, default=None,
                   help="comma list of plain, optimized, compiled, timm, timm-compiled (default: cpu: plain, "
                        "optimized, timm, timm-compiled (+ compiled with --compile); cuda: plain, timm or, with "
                        "--compile, compiled, timm-compiled)")
    s.add_argument("--no-timm", dest="timm", action="store_false", help="bettervit alone even if timm is installed")
    s.add_argument("--peak-tflops", type=_POS_FLOAT, default=None,
                   help="the device's peak for MFU (default: known-GPU table on cuda, measured matmul on cpu)")
    s.add_argument("--threads", type=_int_at_least(1), default=None, help="CPU threads for torch")
    s.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")

    s = sub.add_parser("export", help="torch.export (.pt2) or ONNX file, checked against eager")
    s.add_argument("--model", required=True)
    s.add_argument("--checkpoint", default=None, help="a run checkpoint or weight file (default: released weights)")
    s.add_argument("--format", choices=["onnx", "pt2"], required=True)
    s.add_argument("--output", required=True, metavar="FILE")
    s.add_argument("--img-size", type=_int_at_least(8), default=None, help="example input size (default: the model's)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    hw = s.add_mutually_exclusive_group()
    hw.add_argument("--dynamic-hw", dest="dynamic_hw", action="store_true", default=None,
                    help="require a dynamic H x W (default: dynamic where the model allows)")
    hw.add_argument("--static-hw", dest="dynamic_hw", action="store_false", help="export H x W as fixed")
    s.add_argument("--static-batch", action="store_true", help="export the batch dimension as fixed")
    s.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check against eager")
    from .detection.cli import add_detect_parser  # detect train | eval | predict | scenes

    add_detect_parser(sub)
    return p


# ---------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .factory import get_entry, list_models
    from .models.facts import model_counts

    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no registered model matches {args.pattern!r}; try `bettervit models`")
    rows = []
    for name in names:
        size, params, flops = model_counts(name)
        entry = get_entry(name)
        img = str(size) if isinstance(size, int) else "x".join(map(str, size))
        rows.append((name, entry.family, img, _fmt(params / 1e6, 2), _fmt(flops and flops / 2e9, 2),
                     entry.weights or "-"))
    header = ("model", "family", "img", "params (M)", "GMACs", "default weights")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    right = {2, 3, 4}
    line = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    print(line(header).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r).rstrip())
    return 0


def _fmt(v: float | None, nd: int) -> str:
    return "?" if v is None else f"{v:.{nd}f}"


def _run_config(args: argparse.Namespace, task: str):
    """The run's config from the options given on this command line (``bettervit.train.config.merge_config``:
    defaults < recipe < saved config on --resume < these options)."""
    from .train.config import merge_config

    explicit = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "quiet", "resume",
                                                                                   "overwrite")}
    explicit["task"] = task
    return merge_config(explicit, resume=args.resume)


def cmd_train(args: argparse.Namespace, task: str = "train") -> int:
    from .train.engine import run

    if getattr(args, "recipe", None) == "list":
        from .train.recipes import list_recipes

        for name, r in list_recipes().items():
            print(f"{name:<22} {r.get('models', ''):<10} {r.get('description', '')}")
        return 0
    if not args.model:
        raise CliError("the following arguments are required: --model")

    cfg = _run_config(args, task)
    out = run(cfg, resume=args.resume, overwrite=args.overwrite)
    if _is_main():
        from .train.rundir import read_metrics

        rows = read_metrics(out)
        if rows and "val_top1" in rows[-1]:
            best = max((r for r in rows if "val_top1" in r), key=lambda r: r["val_top1"])
            print(f"best val top-1 {best['val_top1']:.2f}% (epoch {best['epoch']}), last {rows[-1]['val_top1']:.2f}%")
            if cfg.labels_per_class and cfg.data in (None, "", "digits"):
                _print_pixel_baselines(cfg.labels_per_class, cfg.seed, cfg.labels_per_class * 10)  # 10 digit classes
        elif rows:
            print(f"train loss {rows[0]['train_loss']:.4f} (epoch 1) -> {rows[-1]['train_loss']:.4f} "
                  f"(epoch {rows[-1]['epoch']})")
        print(f"run directory: {out}")
    return 0


def _print_pixel_baselines(labels_per_class: int | None, seed: int, n_images: int) -> None:
    """The digits' pixel baselines on the same labelled subset (``--labels-per-class`` / ``--seed``)."""
    from .train.probe import digits_pixel_baselines

    base = digits_pixel_baselines(labels_per_class, seed)
    print(f"pixel baselines on the same {n_images} train images: logistic regression "
          f"{base['pixel_logreg_top1']:.2f}%  1-NN {base['pixel_1nn_top1']:.2f}%")


def _read_weights(checkpoint: str) -> tuple[dict, dict]:
    """(state_dict, meta) of a run checkpoint (meta: class names, preprocessing) or any weight file (meta {})."""
    from . import weights
    from .train.checkpoint import load_checkpoint

    if not Path(checkpoint).is_file():
        raise CliError(f"checkpoint not found: {checkpoint}")
    if checkpoint.endswith(".safetensors"):
        return weights.load_state_dict(checkpoint), {}
    raw = load_checkpoint(checkpoint)
    meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    return weights.unwrap(raw, checkpoint), meta


def _load_for_inference(model_name: str, checkpoint: str | None, num_classes: int | None, img_size: int | None,
                        device, loaded: tuple[dict, dict] | None = None, optimize: bool = True):
    """(model in eval mode, meta); without a checkpoint, the model's released weights. On the CPU (and with
    ``optimize``) the model goes through ``bettervit.optimize``: same outputs to float rounding, faster."""
    model, meta = _build_for_inference(model_name, checkpoint, num_classes, img_size, loaded)
    model = model.to(device).eval()
    if optimize and getattr(device, "type", str(device)) == "cpu":
        from . import optimize as optimize_model

        model = optimize_model(model, inplace=True)
    return model, meta


def _build_for_inference(model_name: str, checkpoint: str | None, num_classes: int | None, img_size: int | None,
                         loaded: tuple[dict, dict] | None):
    from . import create_model, weights

    if checkpoint is None:
        return create_model(model_name, pretrained=True, img_size=img_size), {}
    sd, meta = loaded or _read_weights(checkpoint)
    if meta.get("class_names") is not None:
        num_classes = len(meta["class_names"])
    img_size = img_size or (meta.get("preprocess") or {}).get("img_size")
    frames = (meta.get("preprocess") or {}).get("num_frames")  # a video run's clip length
    model = create_model(model_name, num_classes=num_classes, img_size=img_size, **({"num_frames": frames} if frames else {}))
    weights.load_into(model, sd, source=checkpoint)
    return model, meta


def _device(name: str):
    from .train.distributed import resolve_device

    return resolve_device(name)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .data import build_data
    from .data.augment import AugmentConfig, DeviceAugment
    from .train import distributed
    from .train.config import default_img_size, default_num_frames
    from .train.tasks.classify import evaluate_classifier

    default_img_size(args.model)  # an unknown model is reported before the checkpoint or data are read
    dev = _device(args.device)
    loaded = _read_weights(args.checkpoint)
    meta = loaded[1]
    img_size = args.img_size or (meta.get("preprocess") or {}).get("img_size") or default_img_size(args.model)
    frames = (meta.get("preprocess") or {}).get("num_frames") or default_num_frames(args.model)
    data = build_data(args.data, img_size, num_frames=frames)
    names = meta.get("class_names")
    if names is not None and list(names) != data.class_names:
        raise CliError(f"{data.name} has classes {_short(data.class_names)}, the checkpoint {_short(list(names))}")
    model, _ = _load_for_inference(args.model, args.checkpoint, data.num_classes, img_size, dev, loaded,
                                   optimize=args.optimize)
    aug = DeviceAugment(AugmentConfig.for_data(data.name), img_size, data.mean, data.std, data.num_classes).to(dev)
    with torch.inference_mode():
        r = evaluate_classifier(model, data, aug, distributed.DistInfo(device=dev), args.batch_size, workers=args.workers)
    print(f"top-1 {r['val_top1']:.2f}%  top-5 {r['val_top5']:.2f}%  loss {r['val_loss']:.4f}  "
          f"({r['n']} images, {data.name} val)")
    if args.knn is not None:
        from .train.probe import extract_features, knn_top1

        if args.labels_per_class:
            data = data.with_labels_per_class(args.labels_per_class, args.seed)
        with torch.inference_mode():
            tf, ty = extract_features(model, data, "train", aug.eval_batch, dev, args.batch_size, args.workers)
            vf, vy = extract_features(model, data, "val", aug.eval_batch, dev, args.batch_size, args.workers)
        acc = knn_top1(tf, ty, vf, vy, args.knn, num_classes=data.num_classes)
        print(f"k-NN top-1 {acc:.2f}%  (k={args.knn}, cosine, {len(ty)} train images)")
        if data.name == "digits":
            _print_pixel_baselines(args.labels_per_class, args.seed, len(ty))
    return 0


def _short(names: list[str], n: int = 4) -> str:
    return "[" + ", ".join(names[:n]) + (", ...]" if len(names) > n else "]")


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .data import IMAGENET_MEAN, IMAGENET_STD
    from .data.folder import decode_image

    from .factory import get_entry
    from .train.config import default_img_size

    get_entry(args.model)  # an unknown name is reported before anything else
    dev = _device(args.device)
    for f in args.images:
        if not Path(f).is_file():
            raise CliError(f"image not found: {f}")
    model, meta = _load_for_inference(args.model, args.checkpoint, None, args.img_size, dev, optimize=args.optimize)
    pre = meta.get("preprocess") or {}
    size = args.img_size or pre.get("img_size") or default_img_size(args.model)
    crop_pct = pre.get("crop_pct", 0.875)
    mean = torch.tensor(pre.get("mean", IMAGENET_MEAN), device=dev).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("std", IMAGENET_STD), device=dev).view(1, 3, 1, 1)
    names = meta.get("class_names")
    for f in args.images:
        try:
            x = decode_image(f, round(size / crop_pct), size, grey=bool(pre.get("grey")))
        except Exception as e:  # noqa: BLE001
            raise CliError(f"cannot read image {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        x = (x[None].to(dev).float() / 255 - mean) / std
        with torch.inference_mode():
            prob = model(x).float().softmax(-1)[0]
        k = min(args.topk, prob.numel())
        top = prob.topk(k)
        print(f"{f}:")
        for pr, i in zip(top.values.tolist(), top.indices.tolist()):
            label = names[i] if names is not None and i < len(names) else f"class {i}"
            print(f"  {pr * 100:6.2f}%  {label}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import run_benchmark
    from .factory import get_entry

    get_entry(args.model)  # an unknown name is reported before anything is built
    dev = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json and Path(args.json).parent and not Path(args.json).parent.is_dir():
        raise CliError(f"--json: directory not found: {Path(args.json).parent}")
    run_benchmark(args.model, batch_size=args.batch_size or (128 if dev.type == "cuda" else 8),
                  img_size=args.img_size, repeats=args.repeats, train=args.train, device=dev, amp=args.amp,
                  compile=args.compile, compile_mode=args.compile_mode, impls=args.impls, warmup=args.warmup,
                  peak_tflops=args.peak_tflops, use_timm=args.timm, json_path=args.json)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportError, export_model
    from .factory import get_entry

    get_entry(args.model)  # an unknown name is reported before anything is read
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise CliError(f"output directory not found: {out.parent}")
    if args.format == "onnx":
        from .export import require_onnx

        try:
            require_onnx()
        except ImportError as e:
            raise CliError(str(e)) from None
    model, _ = _load_for_inference(args.model, args.checkpoint, None, args.img_size, "cpu", optimize=False)  # export the plain model
    try:
        report = export_model(model, args.format, out, img_size=args.img_size, dynamic_batch=not args.static_batch,
                              dynamic_hw=args.dynamic_hw, verify=args.verify, overwrite=args.overwrite)
    except ExportError as e:
        sys.stderr.write(f"bettervit export: failed: {' '.join(str(e).split())}\n")
        return 1
    print(report.summary())
    return 0


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet or not _is_main() else logging.INFO
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("bettervit")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 run failed, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    _setup_logging(args.quiet)
    from .detection.cli import cmd_detect

    commands = {"models": cmd_models, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
                "pretrain": lambda a: cmd_train(a, "pretrain"), "bench": cmd_bench,
                "export": cmd_export, "detect": cmd_detect}
    from .train.engine import Diverged

    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        sys.stderr.write(f"bettervit {args.command}: error: {msg}\n")
        return EXIT_BAD_INPUT
    except Diverged as e:
        sys.stderr.write(f"bettervit {args.command}: stopped: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"bettervit {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
