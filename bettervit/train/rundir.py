"""The run directory: merged config (YAML), metrics.jsonl (one JSON object per epoch) and curves.png.

Refuses to reuse a directory that already holds a run unless the caller resumes it or asks to overwrite it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

RUN_FILES = ("config.yaml", "metrics.jsonl", "curves.png", "best.pt", "last.pt")


def check_run_dir(path: Path, resume: bool, overwrite: bool) -> None:
    """A one-line ValueError unless the directory may be used as asked. Writes nothing."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    exists = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if path.exists() and not path.is_dir():
        raise ValueError(f"run directory {path} exists and is not a directory")
    if resume:
        if not (path / "last.pt").is_file():
            raise ValueError(f"cannot resume: {path / 'last.pt'} not found")
    elif exists and not overwrite:
        raise ValueError(f"run directory {path} already exists; pass --resume to continue it or --overwrite to replace it")


def clear_run_dir(path: Path, task_files: tuple[str, ...] = ()) -> None:
    """--overwrite: remove the files an earlier run wrote (and nothing else): the loop's ``RUN_FILES`` and the
    task's ``task_files`` (glob patterns, e.g. MAE's ``mae_epoch*.png``)."""
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for pattern in task_files:
        for p in path.glob(pattern):
            if p.is_file():
                p.unlink()


def write_yaml(path: Path, data: dict) -> None:
    import yaml

    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    f = path / "metrics.jsonl"
    if not f.exists():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """On resume: keep the lines of epochs the checkpoint already covers (a crash may have left a later one)."""
    rows = [r for r in read_metrics(path) if r["epoch"] <= last_epoch]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(path: Path, row: dict) -> None:
    with open(path / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def plot_curves(path: Path) -> None:
    """curves.png: losses (left) and validation accuracy (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    val_rows = [r for r in rows if "val_top1" in r]  # runs may evaluate every few epochs only
    has_val = bool(val_rows)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(10 if has_val else 5, 3.6))
    ax = axes[0] if has_val else axes
    ax.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    if has_val:
        ax.plot([r["epoch"] for r in val_rows], [r["val_loss"] for r in val_rows], "o-", label="val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if has_val:
        ax = axes[1]
        vep = [r["epoch"] for r in val_rows]
        ax.plot(vep, [r["val_top1"] for r in val_rows], "o-", label="top-1")
        ax.plot(vep, [r["val_top5"] for r in val_rows], "o-", label="top-5")
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy (%)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path / ".curves.png.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path / "curves.png")
