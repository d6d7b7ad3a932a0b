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
from .optim import build_optimizer, cosine_with_warmup

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


def build_classifier(cfg: RunConfig, num_classes: int, img_size: int) -> nn.Module:
    from .. import create_model

    overrides = {"drop_path_rate": cfg.drop_path} if cfg.drop_path is not None else {}
    return create_model(cfg.model, pretrained=cfg.init or False, num_classes=num_classes, img_size=img_size, **overrides)


def build_pretrain_model(cfg: RunConfig, img_size: int) -> nn.Module:
    from .. import create_model

    overrides = {"drop_path_rate": cfg.drop_path} if cfg.drop_path is not None else {}
    if cfg.method == "mae":
        from ..pretrain.mae import MaskedAutoencoderHiera

        model = create_model(cfg.model, pretrained=cfg.init or False, img_size=img_size, **overrides)
        if not isinstance(model, MaskedAutoencoderHiera):
            raise ValueError(f"--method mae needs an MAE model (e.g. mae_hiera_nano), got {cfg.model}")
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
    if cfg.task == "pretrain":
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
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.data, img_size)
    if cfg.task == "train":
        model = build_classifier(cfg, data.num_classes, img_size)
    else:
        model = build_pretrain_model(cfg, img_size)
    return Prepared(cfg, info, out, data, model, img_size, resume_ckpt, overwrite)


def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train or pretrain as configured; returns the run directory. Bad input raises a one-line ValueError before
    anything is written."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = distributed.setup(cfg.device)
    try:
        p = prepare(cfg, info, resume, overwrite)
        return _fit(p)
    finally:
        distributed.cleanup()


def _fit(p: Prepared) -> Path:  # noqa: C901 - the loop is meant to be read in one place
    cfg, info, out, data = p.cfg, p.info, p.out, p.data
    plain = p.model
    is_train = cfg.task == "train"
    if cfg.grad_checkpointing:
        if not hasattr(plain, "set_grad_checkpointing"):
            raise ValueError(f"{cfg.model} does not support --grad-checkpointing")
        plain.set_grad_checkpointing(True)
    st = p.resume_ckpt["resume"] if p.resume_ckpt is not None else None
    if st is not None:  # full weights into the plain module on every rank, before any sharding
        try:
            plain.load_state_dict(st.get("model") or p.resume_ckpt["model"])
        except RuntimeError as e:
            raise ValueError(f"cannot resume {out}: its weights do not fit the model as configured now "
                             f"({str(e).splitlines()[0]})") from e
    plain.to(info.device)
    model = distributed.wrap(plain, info, cfg.dist_mode)
    sharded = cfg.dist_mode == "fsdp" and info.enabled
    if cfg.compile:
        model = torch.compile(model)

    optimizer = build_optimizer(plain, cfg.lr, cfg.weight_decay, cfg.layer_decay if is_train else 1.0)
    per_rank = len(data.indices("train", 0, cfg.seed, info.rank, info.world, True, cfg.batch_size))
    batches_per_epoch = per_rank // cfg.batch_size
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)
    scheduler = cosine_with_warmup(optimizer, cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch),
                                   cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None
    ema = ModelEma(plain, cfg.ema_decay) if cfg.ema_decay > 0 else None
    aug = DeviceAugment(augment_config(cfg, data), p.img_size, data.mean, data.std, data.num_classes).to(info.device)

    start_epoch, best_top1 = 0, -1.0
    if st is not None:
        saved_fsdp = st.get("optimizer_format") == "fsdp_full"
        if saved_fsdp != sharded:
            raise ValueError(f"{out} was saved {'with' if saved_fsdp else 'without'} --dist fsdp under torchrun; "
                             f"resume it the same way")
        distributed.load_optimizer_state(plain, optimizer, st["optimizer"], sharded)
        scheduler.load_state_dict(st["scheduler"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        set_rng_state(st["rng"])
        start_epoch, best_top1 = int(st["epoch"]), float(st["best_top1"])
        if info.is_main:
            rundir.truncate_metrics(out, start_epoch)

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
        model_cfg = getattr(plain, "config", None)
        rundir.write_yaml(out / "config.yaml", {
            **meta_base,
            "model_config": _plain(model_cfg),
            "data": {"name": data.name, "train_images": data.size("train"), "val_images": data.size("val"),
                     "skipped_files": data.skipped, "img_size": p.img_size},
            "world_size": info.world,
        })
        log.info("%s %s on %s (%d train / %d val images, %d px) -> %s", cfg.task, cfg.model, data.name,
                 data.size("train"), data.size("val"), p.img_size, out)
        if data.skipped:
            log.info("skipped %d unreadable or non-image file(s)", data.skipped)

    fixed_val = None  # MAE: the images of the reconstruction PNG (every rank runs the forward: FSDP needs it)
    if cfg.method == "mae":
        vx, _ = next(data.batches("val", list(range(min(8, data.size("val")))), 8))
        fixed_val = aug.eval_batch(vx.to(info.device))

    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    for epoch in range(start_epoch, end_epoch):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, info.rank))
        model.train()
        idx = data.indices("train", epoch, cfg.seed, info.rank, info.world, True, cfg.batch_size)
        pbar = _progress(cfg, info, len(idx) * info.world, f"epoch {epoch + 1}/{cfg.epochs}")
        loss_sum, n_seen, t0 = torch.zeros((), dtype=torch.float64), 0, time.perf_counter()
        for i, (x, y) in enumerate(data.batches("train", idx, cfg.batch_size, cfg.workers)):
            x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
            last_micro = (i + 1) % cfg.accum_steps == 0 or i + 1 == batches_per_epoch
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast(cfg, info.device):
                    if is_train:
                        xa, target = aug.train_batch(x, y)
                        loss = soft_cross_entropy(model(xa), target)
                    elif cfg.method == "mae":
                        xa, _ = aug.train_batch(x, y)
                        loss = model(xa, mask_ratio=cfg.mask_ratio or 0.6).loss
                    else:
                        xa, _ = aug.train_batch(x, y)
                        loss = model(xa).loss
                lv = float(loss.detach())
                if info.enabled:  # every rank stops together: a NaN on one rank makes the sum NaN on all
                    ok = torch.tensor([0.0 if math.isfinite(lv) else 1.0], device=info.device)
                    if distributed.all_reduce_sum(ok, info).item() > 0 and math.isfinite(lv):
                        lv = float("nan")
                if not math.isfinite(lv):
                    if pbar is not None:
                        pbar.close()
                    where = f"{out / 'last.pt'}" if (out / "last.pt").exists() else "none yet (no epoch finished)"
                    raise Diverged(f"loss is {lv} at epoch {epoch + 1} step {i + 1}; stopped. Last good checkpoint: {where}")
                scaled = loss / cfg.accum_steps
                (scaler.scale(scaled) if scaler else scaled).backward()
            if last_micro:
                if scaler:
                    scaler.unscale_(optimizer)
                if cfg.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.clip_grad)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update(plain)
            loss_sum += lv * len(y)
            n_seen += len(y)
            if pbar is not None:
                pbar.update(len(y) * info.world)
                pbar.set_postfix(loss=f"{lv:.4f}", lr=f"{_lr(optimizer):.2e}", refresh=False)
        if pbar is not None:
            pbar.close()
        elapsed = time.perf_counter() - t0
        stats = torch.tensor([loss_sum.item(), float(n_seen)], dtype=torch.float64, device=info.device)
        distributed.all_reduce_sum(stats, info)
        row = {"epoch": epoch + 1, "train_loss": stats[0].item() / max(1.0, stats[1].item()), "lr": _lr(optimizer),
               "img_per_s": stats[1].item() / max(elapsed, 1e-9), "epoch_time_s": elapsed}

        eval_model = ema.module if ema is not None else plain
        if is_train:
            row.update({k: v for k, v in evaluate(eval_model, data, aug, info, cfg.batch_size, cfg,
                                                  workers=cfg.workers).items() if k != "n"})
            improved = row["val_top1"] > best_top1
            best_top1 = max(best_top1, row["val_top1"])
            row["best_top1"] = best_top1
        else:
            improved = True
        if fixed_val is not None:
            _save_mae_png(plain, fixed_val, out / f"mae_epoch{epoch + 1:03d}.png", data, cfg, write=info.is_main)

        # checkpoints: the state dicts first (a collective under FSDP), then only rank 0 writes
        eval_sd = clean_state_dict(unwrap_model(eval_model).state_dict())
        raw_sd = clean_state_dict(unwrap_model(plain).state_dict()) if ema is not None else None
        optim_sd = distributed.optimizer_state(plain, optimizer, sharded)
        meta = {**meta_base, "epoch": epoch + 1, "metrics": row}
        if info.is_main:
            rundir.append_metrics(out, row)
            rundir.plot_curves(out)
            if improved and is_train:
                atomic_save({"model": eval_sd, "meta": meta}, out / "best.pt")
            resume_state = {
                "model": raw_sd,
                "optimizer": optim_sd,
                "optimizer_format": "fsdp_full" if sharded else "plain",
                "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler else None,
                "rng": rng_state(),
                "epoch": epoch + 1,
                "best_top1": best_top1,
            }
            atomic_save({"model": eval_sd, "meta": meta, "resume": resume_state}, out / "last.pt")
            _log_epoch(row, is_train)

    agree, vals = distributed.ranks_agree(plain, info)
    if info.enabled and info.is_main:
        if agree:
            log.info("ranks agree: weight fingerprint %s on all %d ranks", vals[0], info.world)
        else:
            log.error("ranks DISAGREE: weight fingerprints %s", vals)
    if info.enabled and not agree:
        raise RuntimeError("ranks ended with different weights")
    return out


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups)


def _progress(cfg: RunConfig, info: distributed.DistInfo, total: int, desc: str):
    if not (cfg.progress and info.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", unit_scale=False, dynamic_ncols=True, leave=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")


def _log_epoch(row: dict, is_train: bool) -> None:
    if is_train:
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
    """Rows: original | masked (hidden units grey) | reconstruction, for a fixed set of validation images."""
    from ..pretrain.mae import reconstruct_images

    was = model.training
    model.eval()
    g = torch.random.get_rng_state()
    torch.manual_seed(0)  # the same mask every epoch, and the training RNG left untouched
    out = model(x, mask_ratio=cfg.mask_ratio or 0.6)
    rec = reconstruct_images(model, x, out)
    torch.random.set_rng_state(g)
    model.train(was)
    if not write:
        return
    mean = torch.tensor(data.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(data.std, device=x.device).view(1, 3, 1, 1)
    m = model.config.units_side
    visible = out.mask.view(-1, 1, m, m).float()  # (B, 1, m, m), True = visible (the MAE model's convention)
    visible = F.interpolate(visible, size=x.shape[-2:], mode="nearest")  # (B, 1, H, W)
    shown = lambda t: t.float() * std + mean  # noqa: E731 - back to [0, 1] pixels
    save_image_grid([shown(x), shown(x) * visible + 0.5 * (1 - visible), shown(rec)], path)


def save_image_grid(rows: list[Tensor], path: Path) -> None:
    """Each row a batch (B, 3, H, W) in [0, 1]; written as one PNG with Pillow."""
    import numpy as np
    from PIL import Image

    grid = torch.cat([torch.cat(list(r.clamp(0, 1).float().cpu()), dim=-1) for r in rows], dim=-2)  # (3, R*H, B*W)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(arr).save(tmp)
    tmp.replace(path)
