"""The training loop, read in one sitting; the same for every task (``bettervit/train/tasks``).

``run(cfg)`` does, in order:
1. check everything the user gave (task, model name, data, checkpoint, run directory) *before* writing anything;
2. let the task build its data and model; fill the defaults; AdamW + schedule, EMA, AMP;
3. per epoch: reseed from (seed, epoch, rank) so the epoch's data order, augmentation and dropout are fixed by the
   epoch number alone; train with gradient accumulation and clipping on the task's loss; every ``eval_every``
   epochs and at the last the task's evaluation; the task's after-epoch work (e.g. MAE figures); rank 0 appends
   ``metrics.jsonl``, redraws ``curves.png`` and writes the best (when the task's ``best_metric`` improved) and
   last checkpoints atomically.
Resuming loads the last checkpoint (weights, optimizer, scheduler, EMA, scaler, RNG states, epoch) and carries on,
so a run stopped after any epoch ends with the same weights as one never stopped (on CPU).

The loop knows no task: what differs between classification, linear probing, MAE and MIM pretraining (and later
detection) is in the task object, whose interface is ``bettervit/train/tasks/base.py``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import distributed, rundir
from .checkpoint import atomic_save, clean_state_dict, load_checkpoint, rng_state, set_rng_state, unwrap_model
from .config import RunConfig
from .ema import ModelEma
from .optim import build_optimizer, build_scheduler
from .precision import autocast
from .tasks import Data, Task, all_run_files, create_task

log = logging.getLogger("bettervit.train")


class Diverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63)


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What ``prepare`` checked and built; nothing has been written yet."""

    cfg: RunConfig
    info: distributed.DistInfo
    out: Path
    task: Task
    data: Data
    model: nn.Module  # the plain module (weights, checkpoints)
    resume_ckpt: dict | None
    overwrite: bool


def prepare(cfg: RunConfig, info: distributed.DistInfo, resume: bool = False, overwrite: bool = False) -> Prepared:
    """Check the config, the run directory and the checkpoint to resume; let the task build data and model and
    fill the defaults. Writes nothing; bad input is a one-line ValueError."""
    task = create_task(cfg)
    cfg.validate()
    task.validate(cfg)
    out = cfg.run_dir()
    rundir.check_run_dir(out, resume=resume, overwrite=overwrite)
    if cfg.amp == "fp16" and info.device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    if cfg.dist_mode == "fsdp" and cfg.ema_decay > 0:
        raise ValueError("--ema-decay cannot be combined with --dist fsdp")
    resume_ckpt = load_checkpoint(out / "last.pt") if resume else None
    if resume_ckpt is not None and "resume" not in resume_ckpt:
        raise ValueError(f"{out / 'last.pt'} holds no training state to resume from")
    torch.manual_seed(cfg.seed)
    data = task.build_data(cfg, info)
    task.resolve_defaults(cfg, data.size("train"), info.world)
    model = task.build_model(cfg, data)
    return Prepared(cfg, info, out, task, data, model, resume_ckpt, overwrite)


def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Run the task ``cfg`` asks for; returns the run directory. Bad input raises a one-line ValueError before
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
    batches_per_epoch: int
    start_epoch: int = 0
    best: float = float("-inf")  # the best value of the task's best_metric so far


def _fit(p: Prepared) -> Path:
    """The run: place the model, build the optimizer, restore a resumed run, write the run header, then per epoch
    train, evaluate, let the task draw, save; finally check that all ranks ended with the same weights."""
    cfg, info, task = p.cfg, p.info, p.task
    resume_state = p.resume_ckpt["resume"] if p.resume_ckpt is not None else None
    plain = _place_model(p, resume_state)
    loop = _build_loop(p, plain)
    if resume_state is not None:
        _restore(p, loop, resume_state)
    meta_base = _write_run_header(p)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, loop.start_epoch + cfg.stop_after)
    for epoch in range(loop.start_epoch, end_epoch):
        row = _train_epoch(p, loop, epoch)
        improved = _evaluate_epoch(p, loop, epoch, row)
        task.after_epoch(plain, epoch, p.out, info.is_main)
        _save_epoch(p, loop, epoch, row, improved, meta_base)
    task.after_run(plain, p.out, info.is_main)
    _check_ranks_agree(plain, info)
    return p.out


def _place_model(p: Prepared, resume_state: dict | None) -> nn.Module:
    """Gradient checkpointing, the resumed weights (full, on every rank, before any sharding), the device."""
    cfg, plain = p.cfg, p.model
    if cfg.grad_checkpointing:
        target = p.task.grad_checkpoint_target(plain)
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
    """Wrap for DDP / FSDP / compile; AdamW with layer-wise groups; the schedule per optimizer step; AMP scaler,
    EMA; then the task's own setup on the device (e.g. its augmentation)."""
    cfg, info, data = p.cfg, p.info, p.data
    model = distributed.wrap(plain, info, cfg.dist_mode)
    sharded = cfg.dist_mode == "fsdp" and info.enabled
    if cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(plain, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    per_rank = len(data.indices("train", 0, cfg.seed, info.rank, info.world, True, cfg.batch_size))
    batches_per_epoch = per_rank // cfg.batch_size
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)
    scheduler = build_scheduler(cfg.sched, optimizer, cfg.epochs * steps_per_epoch,
                                round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None
    ema = ModelEma(plain, cfg.ema_decay) if cfg.ema_decay > 0 else None
    p.task.setup(plain, data, info.device)
    return Loop(plain, model, sharded, optimizer, scheduler, scaler, ema, batches_per_epoch)


def _restore(p: Prepared, loop: Loop, st: dict) -> None:
    """Optimizer, schedule, EMA, scaler, RNG, epoch and best value of a resumed run; metrics of later epochs are
    dropped."""
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
    loop.start_epoch = int(st["epoch"])
    loop.best = float(st.get(p.task.best_key, float("-inf")))
    if p.info.is_main:
        rundir.truncate_metrics(p.out, loop.start_epoch)


def _write_run_header(p: Prepared) -> dict:
    """Rank 0 creates the run directory and writes config.yaml (the resolved config this run uses); returns the
    metadata every checkpoint carries."""
    cfg, info, data, out, task = p.cfg, p.info, p.data, p.out, p.task
    meta_base = {
        "model_name": cfg.model,
        "task": cfg.task,
        "method": cfg.method,
        "class_names": data.class_names,
        "preprocess": data.preprocess_info(),
        "config": cfg.to_dict(),
        **task.checkpoint_meta(),
    }
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if p.overwrite:
            rundir.clear_run_dir(out, all_run_files())
        rundir.write_yaml(out / "config.yaml", {**meta_base, **task.describe(p.model, data), "world_size": info.world})
        log.info("%s %s on %s (%s) -> %s", cfg.task, cfg.model, data.name, task.data_summary(data), out)
        if data.skipped:
            log.info("skipped %d unreadable or non-image file(s)", data.skipped)
    return meta_base


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
    cfg, info, data, task = p.cfg, p.info, p.data, p.task
    torch.manual_seed(epoch_seed(cfg.seed, epoch, info.rank))
    loop.model.train()
    idx = data.indices("train", epoch, cfg.seed, info.rank, info.world, True, cfg.batch_size)
    pbar = _progress(cfg, info, len(idx) * info.world, f"epoch {epoch + 1}/{cfg.epochs}")
    loss_sum, n_seen, t0 = 0.0, 0, time.perf_counter()
    for i, batch in enumerate(data.batches("train", idx, cfg.batch_size, cfg.workers)):
        batch = task.to_device(batch, info.device)
        n = task.batch_len(batch)
        last_micro = (i + 1) % cfg.accum_steps == 0 or i + 1 == loop.batches_per_epoch
        no_sync = not last_micro and hasattr(loop.model, "no_sync")
        with loop.model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(cfg.amp, info.device):
                loss = task.loss(loop.model, batch)
            lv = float(loss.detach())
            _check_finite(p, lv, epoch, i, pbar)
            scaled = loss / cfg.accum_steps
            (loop.scaler.scale(scaled) if loop.scaler else scaled).backward()
        if last_micro:
            _optimizer_step(p, loop)
        loss_sum += lv * n
        n_seen += n
        if pbar is not None:
            pbar.update(n * info.world)
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
    """Every ``eval_every`` epochs and at the last: the task's metrics into ``row``; returns whether its
    ``best_metric`` improved (then ``row[best_key]`` holds the new best)."""
    cfg, task = p.cfg, p.task
    if (epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs:
        return False
    row.update(task.evaluate(_eval_model(loop), p.data, p.info, cfg, p.out))
    if task.best_metric is None or task.best_metric not in row:
        return False
    improved = row[task.best_metric] > loop.best
    loop.best = max(loop.best, row[task.best_metric])
    row[task.best_key] = loop.best
    return improved


def _save_epoch(p: Prepared, loop: Loop, epoch: int, row: dict, improved: bool, meta_base: dict) -> None:
    """State dicts first (a collective under FSDP), then rank 0 appends the metrics, redraws the curves and writes
    best.pt (when the best metric improved) and last.pt (with everything needed to resume)."""
    info, task = p.info, p.task
    eval_sd = task.checkpoint_weights(unwrap_model(_eval_model(loop)))
    keep_raw = loop.ema is not None or not task.weights_are_raw
    raw_sd = clean_state_dict(unwrap_model(loop.plain).state_dict()) if keep_raw else None
    optim_sd = distributed.optimizer_state(loop.plain, loop.optimizer, loop.sharded)
    if not info.is_main:
        return
    meta = {**meta_base, "epoch": epoch + 1, "metrics": row}
    rundir.append_metrics(p.out, row)
    rundir.plot_curves(p.out)
    if improved:
        atomic_save({"model": eval_sd, "meta": meta}, p.out / "best.pt")
    resume_state = {
        "model": raw_sd,  # None: the checkpoint's "model" is the raw weights
        "optimizer": optim_sd,
        "optimizer_format": "fsdp_full" if loop.sharded else "plain",
        "scheduler": loop.scheduler.state_dict(),
        "ema": loop.ema.state_dict() if loop.ema is not None else None,
        "scaler": loop.scaler.state_dict() if loop.scaler else None,
        "rng": rng_state(),
        "epoch": epoch + 1,
        task.best_key: loop.best,
    }
    atomic_save({"model": eval_sd, "meta": meta, "resume": resume_state}, p.out / "last.pt")
    _log_epoch(task, row)


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


def _log_epoch(task: Task, row: dict) -> None:
    metrics = task.epoch_summary(row)
    log.info("epoch %d: train_loss %.4f  %s%.0f img/s", row["epoch"], row["train_loss"],
             f"{metrics}  " if metrics else "", row["img_per_s"])
