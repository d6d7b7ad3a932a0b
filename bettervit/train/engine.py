"""The training loop, read in one sitting: supervised training and MAE / MIM pretraining share it.

``run(cfg)`` does, in order:
1. check everything the user gave (model name, data, checkpoint, run directory) *before* writing anything;
2. build the model (``create_model``, or the MAE / MIM model), the data, AdamW + cosine schedule, EMA, AMP;
3. per epoch: reseed from (seed, epoch, rank) so the epoch's data order, augmentation and dropout are fixed by the
   epoch number alone; train with gradient accumulation and clipping; evaluate (training) or render MAE
   reconstructions (pretraining); rank 0 appends ``metrics.jsonl``, redraws ``curves.png`` and writes the best and
   last checkpoints atomically.
Resuming loads the last checkpoint (weights, optimizer, scheduler, EMA, scaler, RNG states, epoch) and carries on,
so a run stopped after any epoch ends with the same weights as one never stopped (on CPU).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import DataBundle, build_data
from ..data.augment import AugmentConfig, DeviceAugment
from . import distributed, rundir
from .checkpoint import atomic_save, clean_state_dict, load_checkpoint, rng_state, set_rng_state, unwrap_model
from .config import RunConfig
from .ema import ModelEma
from .optim import build_optimizer, build_scheduler
from .probe import LinearProbe

log = logging.getLogger("bettervit.train")


class Diverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------
def default_img_size(model_name: str) -> int:
    from ..factory import get_entry

    size = getattr(get_entry(model_name).config(), "img_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def default_num_frames(model_name: str) -> int:
    """Frames per clip a video model is built for; 0 for image models."""
    from ..factory import get_entry

    return int(getattr(get_entry(model_name).config(), "num_frames", 0) or 0)


def _frames_override(cfg: RunConfig) -> dict:
    return {"num_frames": cfg.num_frames} if cfg.num_frames is not None else {}


def build_classifier(cfg: RunConfig, num_classes: int, img_size: int) -> nn.Module:
    from .. import create_model

    overrides = {"drop_path_rate": cfg.drop_path} if cfg.drop_path is not None else {}
    overrides.update(_frames_override(cfg))
    return create_model(cfg.model, pretrained=cfg.init or False, num_classes=num_classes, img_size=img_size, **overrides)


def build_pretrain_model(cfg: RunConfig, img_size: int) -> nn.Module:
    from .. import create_model

    overrides = {"drop_path_rate": cfg.drop_path} if cfg.drop_path is not None else {}
    if cfg.method == "mae":
        overrides.update(_frames_override(cfg))
        from ..pretrain.mae import MaskedAutoencoderHiera

        for name in ("mask_ratio", "norm_pix_loss"):
            if getattr(cfg, name) is not None:
                overrides[name] = getattr(cfg, name)
        model = create_model(cfg.model, img_size=img_size, **overrides)
        if not isinstance(model, MaskedAutoencoderHiera):
            raise ValueError(f"--method mae needs an MAE model (e.g. mae_hiera_nano), got {cfg.model}")
        if cfg.init:
            from .. import weights
            from ..pretrain.mae import load_mae_init

            fresh = load_mae_init(model, weights.load_state_dict(weights.resolve(cfg.init)), source=cfg.init)
            if fresh:
                log.info("%s holds the encoder only: %d MAE tensors (fusion heads, decoder%s) start fresh", cfg.init,
                         len(fresh), ", encoder norm" if any(k.startswith("encoder_norm.") for k in fresh) else "")
        return model
    from ..pretrain.mim import build_mim

    if not cfg.teacher:
        raise ValueError("--method mim needs --teacher NAME (a bettervit model; its weights via --teacher-checkpoint)")
    if cfg.mask_ratio is not None:
        overrides["mask_ratio"] = cfg.mask_ratio
    model = build_mim(cfg.model, cfg.teacher, teacher_checkpoint=cfg.teacher_checkpoint, img_size=img_size, **overrides)
    if cfg.init:
        from .. import weights

        weights.load_into(model.encoder, weights.load_state_dict(weights.resolve(cfg.init)), source=cfg.init)
    return model


def augment_config(cfg: RunConfig, data: DataBundle) -> AugmentConfig:
    a = AugmentConfig.for_data(data.name)
    for name in ("crop_scale", "hflip", "mixup", "cutmix", "label_smoothing", "randaugment"):
        if getattr(cfg, name) is not None:
            setattr(a, name, getattr(cfg, name))
    if cfg.no_randaugment:
        a.randaugment = None
    if cfg.task == "pretrain" or data.num_frames:  # (clips: crop and flip only, see DeviceAugment)
        a.mixup = a.cutmix = 0.0
        a.randaugment = None
    return a


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def autocast(cfg: RunConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63)


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, aug: DeviceAugment, info: distributed.DistInfo, batch_size: int,
             cfg: RunConfig | None = None, split: str = "val", workers: int = 0) -> dict:
    """Validation loss and top-1 / top-5 accuracy (percent), summed over all ranks' shards."""
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
        with autocast(cfg, info.device) if cfg else contextlib.nullcontext():
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


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What ``prepare`` checked and built; nothing has been written yet."""

    cfg: RunConfig
    info: distributed.DistInfo
    out: Path
    data: DataBundle
    model: nn.Module  # the plain module (weights, checkpoints)
    img_size: int
    resume_ckpt: dict | None
    overwrite: bool


def resolve_defaults(cfg: RunConfig, n_train: int) -> None:
    """Fill every option left at None with a default that suits the task and the size of the training set.

    Tiny training sets (few labels) get small batches and more epochs, so a run still makes a few hundred optimizer
    steps; fine-tuning from pretrained weights (``--init``) gets layer-wise LR decay; a linear probe a larger rate
    and no weight decay. The values are documented in docs/training.md.
    """
    pretrain, mae = cfg.task == "pretrain", cfg.method == "mae"
    if cfg.batch_size is None:
        small = n_train < DEFAULTS["small_data"]
        cfg.batch_size = max(8, min(64, 2 ** int(math.log2(max(1, n_train // 6))))) if small else 64
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    if cfg.epochs is None:
        if pretrain:
            cfg.epochs = DEFAULTS["mae_epochs"] if mae else DEFAULTS["mim_epochs"]
        else:
            small = n_train < DEFAULTS["small_data"]
            cfg.epochs = max(10, math.ceil(DEFAULTS["min_train_steps"] / steps_per_epoch)) if small else 10
    if cfg.lr is None and cfg.recipe_lr is not None:  # a recipe's rate, published for recipe_batch images per step
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg.lr = cfg.recipe_lr * cfg.batch_size * cfg.accum_steps * world / (cfg.recipe_batch or 256)
    if cfg.lr is None:
        if pretrain:
            cfg.lr = DEFAULTS["mae_lr"] if mae else DEFAULTS["mim_lr"]
        elif cfg.linear_probe:
            cfg.lr = DEFAULTS["probe_lr"]
        else:
            cfg.lr = DEFAULTS["finetune_lr"] if cfg.init else DEFAULTS["scratch_lr"]
    if cfg.weight_decay is None:
        cfg.weight_decay = 0.0 if cfg.linear_probe else 0.05
    if cfg.layer_decay is None:
        cfg.layer_decay = DEFAULTS["finetune_layer_decay"] if cfg.init and not pretrain and not cfg.linear_probe else 1.0
    if cfg.warmup_epochs is None:
        cfg.warmup_epochs = max(1.0, round(0.05 * cfg.epochs, 2))
    if cfg.eval_every is None:
        cfg.eval_every = max(1, cfg.epochs // 20)


#: The defaults ``resolve_defaults`` hands out (chosen on the digits few-label benchmark, benchmarks/README.md).
DEFAULTS = {
    "small_data": 1000,  # fewer training images than this: small batches, at least min_train_steps steps
    "min_train_steps": 600,
    "scratch_lr": 1e-3,
    "finetune_lr": 1e-3,
    "finetune_layer_decay": 0.75,
    "probe_lr": 3e-2,
    "mae_epochs": 60,
    "mae_lr": 1.5e-3,
    "mim_epochs": 40,
    "mim_lr": 1.5e-3,
}


def prepare(cfg: RunConfig, info: distributed.DistInfo, resume: bool = False, overwrite: bool = False) -> Prepared:
    cfg.validate()
    out = Path(cfg.output or f"runs/{cfg.model}")
    rundir.check_run_dir(out, resume=resume, overwrite=overwrite)
    if cfg.amp == "fp16" and info.device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    if cfg.dist_mode == "fsdp" and cfg.ema_decay > 0:
        raise ValueError("--ema-decay cannot be combined with --dist fsdp")
    resume_ckpt = load_checkpoint(out / "last.pt") if resume else None
    if resume_ckpt is not None and "resume" not in resume_ckpt:
        raise ValueError(f"{out / 'last.pt'} holds no training state to resume from")
    img_size = cfg.img_size or default_img_size(cfg.model)
    num_frames = default_num_frames(cfg.model)
    if cfg.num_frames is not None:
        if not num_frames:
            raise ValueError(f"--num-frames is for video models; {cfg.model} is an image model")
        num_frames = cfg.num_frames
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.data, img_size, num_frames=num_frames)
    if cfg.labels_per_class:
        data = data.with_labels_per_class(cfg.labels_per_class, cfg.seed)
    resolve_defaults(cfg, data.size("train"))
    if cfg.task == "train":
        model = build_classifier(cfg, data.num_classes, img_size)
        if cfg.linear_probe:
            model = LinearProbe(model, data.num_classes)
    else:
        model = build_pretrain_model(cfg, img_size)
    return Prepared(cfg, info, out, data, model, img_size, resume_ckpt, overwrite)


def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train or pretrain as configured; returns the run directory. Bad input raises a one-line ValueError before
    anything is written."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = distributed.setup(cfg.device)
    ok = False
    try:
        p = prepare(cfg, info, resume, overwrite)
        out = _fit(p)
        ok = True
        return out
    finally:
        distributed.cleanup(ok)


@dataclass
class Loop:
    """Everything the epochs update: the model (wrapped for DDP / FSDP / compile) and its optimizer state."""

    plain: nn.Module  # the unwrapped module: optimizer groups, checkpoints, EMA
    model: nn.Module  # what the forward runs through
    sharded: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    ema: ModelEma | None
    aug: DeviceAugment
    batches_per_epoch: int
    start_epoch: int = 0
    best_top1: float = -1.0


def _fit(p: Prepared) -> Path:
    """The run: place the model, build the optimizer, restore a resumed run, write the run header, then per epoch
    train, evaluate, save; finally check that all ranks ended with the same weights."""
    cfg, info = p.cfg, p.info
    resume_state = p.resume_ckpt["resume"] if p.resume_ckpt is not None else None
    plain = _place_model(p, resume_state)
    loop = _build_loop(p, plain)
    if resume_state is not None:
        _restore(p, loop, resume_state)
    meta_base = _write_run_header(p)
    fixed_val = _reconstruction_batch(p, loop)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, loop.start_epoch + cfg.stop_after)
    for epoch in range(loop.start_epoch, end_epoch):
        row = _train_epoch(p, loop, epoch)
        improved = _evaluate_epoch(p, loop, epoch, row)
        if fixed_val is not None and _is_png_epoch(epoch, cfg.epochs):
            _save_mae_png(plain, fixed_val, p.out / f"mae_epoch{epoch + 1:03d}.png", p.data, cfg, write=info.is_main)
        _save_epoch(p, loop, epoch, row, improved, meta_base)
    if fixed_val is not None:
        _save_mae_png(plain, fixed_val, p.out / "reconstructions.png", p.data, cfg, write=info.is_main)
    _check_ranks_agree(plain, info)
    return p.out


def _place_model(p: Prepared, resume_state: dict | None) -> nn.Module:
    """Gradient checkpointing, the resumed weights (full, on every rank, before any sharding), the device."""
    cfg, plain = p.cfg, p.model
    if cfg.grad_checkpointing:
        target = plain.encoder if isinstance(plain, LinearProbe) else plain
        if not hasattr(target, "set_grad_checkpointing"):
            raise ValueError(f"{cfg.model} does not support --grad-checkpointing")
        target.set_grad_checkpointing(True)
    if resume_state is not None:
        try:
            plain.load_state_dict(resume_state.get("model") or p.resume_ckpt["model"])
        except RuntimeError as e:
            raise ValueError(f"cannot resume {p.out}: its weights do not fit the model as configured now "
                             f"({str(e).splitlines()[0]})") from e
    return plain.to(p.info.device)


def _build_loop(p: Prepared, plain: nn.Module) -> Loop:
    """Wrap for DDP / FSDP / compile; AdamW with layer-wise groups; cosine schedule per optimizer step; AMP
    scaler, EMA and the augmentation on the device."""
    cfg, info, data = p.cfg, p.info, p.data
    model = distributed.wrap(plain, info, cfg.dist_mode)
    sharded = cfg.dist_mode == "fsdp" and info.enabled
    if cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(plain, cfg.lr, cfg.weight_decay, cfg.layer_decay if cfg.task == "train" else 1.0)
    per_rank = len(data.indices("train", 0, cfg.seed, info.rank, info.world, True, cfg.batch_size))
    batches_per_epoch = per_rank // cfg.batch_size
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)
    scheduler = build_scheduler(cfg.sched, optimizer, cfg.epochs * steps_per_epoch,
                                round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None
    ema = ModelEma(plain, cfg.ema_decay) if cfg.ema_decay > 0 else None
    aug = DeviceAugment(augment_config(cfg, data), p.img_size, data.mean, data.std, data.num_classes).to(info.device)
    return Loop(plain, model, sharded, optimizer, scheduler, scaler, ema, aug, batches_per_epoch)


def _restore(p: Prepared, loop: Loop, st: dict) -> None:
    """Optimizer, schedule, EMA, scaler, RNG and epoch of a resumed run; metrics of later epochs are dropped."""
    saved_fsdp = st.get("optimizer_format") == "fsdp_full"
    if saved_fsdp != loop.sharded:
        raise ValueError(f"{p.out} was saved {'with' if saved_fsdp else 'without'} --dist fsdp under torchrun; "
                         f"resume it the same way")
    distributed.load_optimizer_state(loop.plain, loop.optimizer, st["optimizer"], loop.sharded)
    loop.scheduler.load_state_dict(st["scheduler"])
    if loop.ema is not None and st.get("ema") is not None:
        loop.ema.load_state_dict(st["ema"])
    if loop.scaler is not None and st.get("scaler"):
        loop.scaler.load_state_dict(st["scaler"])
    set_rng_state(st["rng"])
    loop.start_epoch, loop.best_top1 = int(st["epoch"]), float(st["best_top1"])
    if p.info.is_main:
        rundir.truncate_metrics(p.out, loop.start_epoch)


def _write_run_header(p: Prepared) -> dict:
    """Rank 0 creates the run directory and writes config.yaml; returns the metadata every checkpoint carries."""
    cfg, info, data, out = p.cfg, p.info, p.data, p.out
    meta_base = {
        "model_name": cfg.model,
        "task": cfg.task,
        "method": cfg.method,
        "class_names": data.class_names,
        "preprocess": data.preprocess_info(),
        "config": cfg.to_dict(),
    }
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if p.overwrite:
            rundir.clear_run_dir(out)
        target = p.model.encoder if isinstance(p.model, LinearProbe) else p.model
        rundir.write_yaml(out / "config.yaml", {
            **meta_base,
            "model_config": _plain(getattr(target, "config", None)),
            "data": {"name": data.name, "train_images": data.size("train"), "val_images": data.size("val"),
                     "skipped_files": data.skipped, "img_size": p.img_size},
            "world_size": info.world,
        })
        what = f"clips of {data.num_frames} frames" if data.num_frames else "images"
        log.info("%s %s on %s (%d train / %d val %s, %d px) -> %s", cfg.task, cfg.model, data.name,
                 data.size("train"), data.size("val"), what, p.img_size, out)
        if data.skipped:
            log.info("skipped %d unreadable or non-image file(s)", data.skipped)
    return meta_base


def _reconstruction_batch(p: Prepared, loop: Loop) -> Tensor | None:
    """MAE: the fixed validation images of the reconstruction figure (every rank runs its forward: FSDP needs it)."""
    if p.cfg.method != "mae":
        return None
    n = min(2 if p.data.num_frames else 8, p.data.size("val"))  # video: two clips, a few frames each
    vx, _ = next(p.data.batches("val", list(range(n)), n))
    return loop.aug.eval_batch(vx.to(p.info.device))


def _is_png_epoch(epoch: int, epochs: int) -> bool:
    """Reconstruction snapshots: the first epoch and about ten more, evenly spaced (not one per epoch)."""
    step = max(1, epochs // 10)
    return epoch == 0 or (epoch + 1) % step == 0


def _loss(p: Prepared, loop: Loop, x: Tensor, y: Tensor) -> Tensor:
    """The training objective of one batch: soft cross-entropy (train), MAE or MIM loss (pretrain)."""
    cfg = p.cfg
    xa, target = loop.aug.train_batch(x, y)
    if cfg.task == "train":
        return soft_cross_entropy(loop.model(xa), target)
    if cfg.method == "mae":
        return loop.model(xa, mask_ratio=cfg.mask_ratio).loss
    return loop.model(xa).loss


def _check_finite(p: Prepared, lv: float, epoch: int, step: int, pbar) -> None:
    """Raise Diverged on a NaN / Inf loss; under torchrun every rank stops together."""
    info = p.info
    if info.enabled:  # a NaN on one rank makes the sum NaN on all
        bad = torch.tensor([0.0 if math.isfinite(lv) else 1.0], device=info.device)
        if distributed.all_reduce_sum(bad, info).item() > 0:
            lv = float("nan")
    if not math.isfinite(lv):
        if pbar is not None:
            pbar.close()
        last = p.out / "last.pt"
        where = f"{last}" if last.exists() else "none yet (no epoch finished)"
        raise Diverged(f"loss is {lv} at epoch {epoch + 1} step {step + 1}; stopped. Last good checkpoint: {where}")


def _optimizer_step(p: Prepared, loop: Loop) -> None:
    """Unscale (fp16), clip, step, zero, advance the schedule, update the EMA."""
    if loop.scaler:
        loop.scaler.unscale_(loop.optimizer)
    if p.cfg.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_([q for q in loop.plain.parameters() if q.requires_grad], p.cfg.clip_grad)
    if loop.scaler:
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
    else:
        loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scheduler.step()
    if loop.ema is not None:
        loop.ema.update(loop.plain)


def _train_epoch(p: Prepared, loop: Loop, epoch: int) -> dict:
    """One pass over this rank's shard, reseeded from (seed, epoch, rank); returns the epoch's metrics row."""
    cfg, info, data = p.cfg, p.info, p.data
    torch.manual_seed(epoch_seed(cfg.seed, epoch, info.rank))
    loop.model.train()
    idx = data.indices("train", epoch, cfg.seed, info.rank, info.world, True, cfg.batch_size)
    pbar = _progress(cfg, info, len(idx) * info.world, f"epoch {epoch + 1}/{cfg.epochs}")
    loss_sum, n_seen, t0 = 0.0, 0, time.perf_counter()
    for i, (x, y) in enumerate(data.batches("train", idx, cfg.batch_size, cfg.workers)):
        x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
        last_micro = (i + 1) % cfg.accum_steps == 0 or i + 1 == loop.batches_per_epoch
        no_sync = not last_micro and hasattr(loop.model, "no_sync")
        with loop.model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(cfg, info.device):
                loss = _loss(p, loop, x, y)
            lv = float(loss.detach())
            _check_finite(p, lv, epoch, i, pbar)
            scaled = loss / cfg.accum_steps
            (loop.scaler.scale(scaled) if loop.scaler else scaled).backward()
        if last_micro:
            _optimizer_step(p, loop)
        loss_sum += lv * len(y)
        n_seen += len(y)
        if pbar is not None:
            pbar.update(len(y) * info.world)
            pbar.set_postfix(loss=f"{lv:.4f}", lr=f"{_lr(loop.optimizer):.2e}", refresh=False)
    if pbar is not None:
        pbar.close()
    elapsed = time.perf_counter() - t0
    stats = torch.tensor([loss_sum, float(n_seen)], dtype=torch.float64, device=info.device)
    distributed.all_reduce_sum(stats, info)
    return {"epoch": epoch + 1, "train_loss": stats[0].item() / max(1.0, stats[1].item()), "lr": _lr(loop.optimizer),
            "img_per_s": stats[1].item() / max(elapsed, 1e-9), "epoch_time_s": elapsed}


def _eval_model(loop: Loop) -> nn.Module:
    return loop.ema.module if loop.ema is not None else loop.plain


def _evaluate_epoch(p: Prepared, loop: Loop, epoch: int, row: dict) -> bool:
    """Supervised runs: validation metrics into ``row`` every ``eval_every`` epochs and at the last; returns whether
    the best top-1 improved. Pretraining: always True (nothing to compare)."""
    cfg = p.cfg
    if cfg.task != "train":
        return True
    if (epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs:
        return False
    res = evaluate(_eval_model(loop), p.data, loop.aug, p.info, cfg.batch_size, cfg, workers=cfg.workers)
    row.update({k: v for k, v in res.items() if k != "n"})
    improved = row["val_top1"] > loop.best_top1
    loop.best_top1 = max(loop.best_top1, row["val_top1"])
    row["best_top1"] = loop.best_top1
    return improved


def _weights_for_checkpoint(module: nn.Module) -> dict[str, Tensor]:
    """The plain module's keys; a linear probe is saved as the plain classifier it amounts to."""
    module = unwrap_model(module)
    if isinstance(module, LinearProbe):
        return module.classifier_state_dict()
    return clean_state_dict(module.state_dict())


def _save_epoch(p: Prepared, loop: Loop, epoch: int, row: dict, improved: bool, meta_base: dict) -> None:
    """State dicts first (a collective under FSDP), then rank 0 appends the metrics, redraws the curves and writes
    best.pt (supervised, when top-1 improved) and last.pt (with everything needed to resume)."""
    cfg, info = p.cfg, p.info
    eval_sd = _weights_for_checkpoint(_eval_model(loop))
    probe = isinstance(loop.plain, LinearProbe)
    raw_sd = clean_state_dict(unwrap_model(loop.plain).state_dict()) if loop.ema is not None or probe else None
    optim_sd = distributed.optimizer_state(loop.plain, loop.optimizer, loop.sharded)
    if not info.is_main:
        return
    meta = {**meta_base, "epoch": epoch + 1, "metrics": row}
    rundir.append_metrics(p.out, row)
    rundir.plot_curves(p.out)
    if improved and cfg.task == "train":
        atomic_save({"model": eval_sd, "meta": meta}, p.out / "best.pt")
    resume_state = {
        "model": raw_sd,
        "optimizer": optim_sd,
        "optimizer_format": "fsdp_full" if loop.sharded else "plain",
        "scheduler": loop.scheduler.state_dict(),
        "ema": loop.ema.state_dict() if loop.ema is not None else None,
        "scaler": loop.scaler.state_dict() if loop.scaler else None,
        "rng": rng_state(),
        "epoch": epoch + 1,
        "best_top1": loop.best_top1,
    }
    atomic_save({"model": eval_sd, "meta": meta, "resume": resume_state}, p.out / "last.pt")
    _log_epoch(row)


def _check_ranks_agree(plain: nn.Module, info: distributed.DistInfo) -> None:
    agree, vals = distributed.ranks_agree(plain, info)
    if info.enabled and info.is_main:
        if agree:
            log.info("ranks agree: weight fingerprint %s on all %d ranks", vals[0], info.world)
        else:
            log.error("ranks DISAGREE: weight fingerprints %s", vals)
    if info.enabled and not agree:
        raise RuntimeError("ranks ended with different weights")


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups)


def _progress(cfg: RunConfig, info: distributed.DistInfo, total: int, desc: str):
    if not (cfg.progress and info.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", unit_scale=False, dynamic_ncols=True, leave=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")


def _log_epoch(row: dict) -> None:
    if "val_top1" in row:
        msg = (f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
               f"val_top1 {row['val_top1']:.2f}%  val_top5 {row['val_top5']:.2f}%  {row['img_per_s']:.0f} img/s")
    else:
        msg = f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f}  {row['img_per_s']:.0f} img/s"
    log.info(msg)


def _plain(obj):
    import dataclasses

    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return str(obj)


@torch.no_grad()
def _save_mae_png(model: nn.Module, x: Tensor, path: Path, data: DataBundle, cfg: RunConfig, write: bool) -> None:
    """The MAE paper's figure for a fixed set of validation images: rows masked input (hidden units grey) |
    reconstruction (visible patches pasted from the input) | original, each image at least 128 px. Video: those
    three rows for each of two clips, one column per reconstructed frame (see :func:`video_figure_rows`)."""
    from ..pretrain.mae import patch_visibility, reconstruct_images

    was = model.training
    model.eval()
    g = torch.random.get_rng_state()
    torch.manual_seed(0)  # the same mask every time, and the training RNG left untouched
    out = model(x, mask_ratio=cfg.mask_ratio)
    rec = reconstruct_images(model, x, out)
    torch.random.set_rng_state(g)
    model.train(was)
    if not write:
        return
    mean = torch.tensor(data.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(data.std, device=x.device).view(1, 3, 1, 1)
    visible = patch_visibility(model, out.mask, x.shape[-2:])  # (B, 1, H, W); video (B, 1, t, H, W)
    shown = lambda t: t.float() * std + mean  # noqa: E731 - back to [0, 1] pixels
    if x.ndim == 5:
        save_image_grid(video_figure_rows(x, rec, visible, model.config.patch_stride_t, shown), path, min_side=96)
        return
    save_image_grid([shown(x) * visible + 0.5 * (1 - visible), shown(rec), shown(x)], path, min_side=128)


def video_figure_rows(x: Tensor, rec: Tensor, visible: Tensor, stride_t: int, shown, max_frames: int = 8) -> list[Tensor]:
    """Rows of the video MAE figure: per clip, masked input | reconstruction | original, over up to ``max_frames``
    of its target frames (the first of every ``stride_t`` frames: what the model reconstructs).
    ``x`` (B, 3, T, H, W), ``rec`` (B, 3, t, H, W), ``visible`` (B, 1, t, H, W) -> rows of (frames, 3, H, W)."""
    frames = x[:, :, ::stride_t]  # (B, 3, t, H, W)
    t = min(frames.shape[2], max_frames)
    as_row = lambda v: v[:, :t].transpose(0, 1)  # noqa: E731 - (3, t, H, W) -> (t, 3, H, W)
    rows = []
    for i in range(x.shape[0]):
        orig, vis = shown(as_row(frames[i])), as_row(visible[i])
        rows += [orig * vis + 0.5 * (1 - vis), shown(as_row(rec[i])), orig]
    return rows


def save_image_grid(rows: list[Tensor], path: Path, min_side: int = 0, gap: int = 2) -> None:
    """Each row a batch (B, 3, H, W) in [0, 1]; written as one PNG with Pillow. Images are enlarged (nearest, an
    integer factor) to at least ``min_side`` pixels and separated by ``gap`` white pixels."""
    import numpy as np
    from PIL import Image

    h = rows[0].shape[-2]
    scale = max(1, -(-min_side // h))  # ceil: at least min_side
    tiles = [[F.interpolate(img[None].float().clamp(0, 1), scale_factor=scale, mode="nearest")[0] for img in r]
             for r in rows]
    H, W = tiles[0][0].shape[-2:]
    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    grid = torch.ones(3, n_rows * (H + gap) - gap, n_cols * (W + gap) - gap)  # white background
    for i, r in enumerate(tiles):
        for j, t in enumerate(r):
            grid[:, i * (H + gap): i * (H + gap) + H, j * (W + gap): j * (W + gap) + W] = t.cpu()
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(arr).save(tmp)
    tmp.replace(path)
