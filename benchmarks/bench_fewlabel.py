"""Few-label benchmark on the embedded digits: does self-supervised pretraining pay when labels are scarce?

Protocol (every step is a `bettervit` CLI command with its defaults; only the names, sizes and --init differ):
  1. pixel baselines: scikit-learn logistic regression and 1-NN on the raw 8x8 pixels of the labelled images;
  2. scratch: `train --model hiera_nano --labels-per-class 10` (and the EVA-02 student likewise);
  3. MAE: `pretrain --method mae --model mae_hiera_nano` on the train images *without labels*, then
     `train --model hiera_nano --init <mae last.pt> --labels-per-class 10` (fine-tune), `--linear-probe`, and
     `eval --knn 10` on the pretrained encoder;
  4. MIM: `pretrain --method mim --model <EVA-02 student> --teacher hiera_nano --teacher-checkpoint <mae last.pt>`:
     the teacher is the MAE encoder of step 3, so no label reaches the student through it; then fine-tune as above.
The table (val top-1 on the 359 unchanged validation images, the last epoch's, not the best) and the curves
(`fewlabel_curves.png`) go to --output. Run: `python benchmarks/bench_fewlabel.py` or `make pretrain-demo`.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from bettervit.cli import main as cli
from bettervit.train.probe import digits_pixel_baselines

MIM_STUDENT = "eva02_nano"


def run_cli(argv: list[str], log) -> None:
    log(f"$ bettervit {' '.join(argv)}")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(argv)
    log(buf.getvalue().rstrip())
    if rc != 0:
        raise SystemExit(f"step failed (exit {rc}): bettervit {' '.join(argv)}")


def last_top1(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "val_top1" in r][-1]["val_top1"]


def knn(model: str, ckpt: Path, labels: int, seed: int, device: str, log) -> float:
    buf = io.StringIO()
    argv = ["eval", "--model", model, "--checkpoint", str(ckpt), "--knn", "10", "--labels-per-class", str(labels),
            "--seed", str(seed), "--workers", "0", "--device", device]
    with contextlib.redirect_stdout(buf):
        rc = cli(argv)
    if rc != 0:
        raise SystemExit(f"k-NN eval failed: {argv}")
    line = next(x for x in buf.getvalue().splitlines() if x.startswith("k-NN"))
    log(line)
    return float(line.split()[2].rstrip("%"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default="runs/fewlabel")
    ap.add_argument("--labels-per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seed of every run and of the labelled subset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["all", "mae", "mim"], default="all")
    ap.add_argument("--pretrain-args", default="", help="extra options for the MAE pretraining (experiments)")
    ap.add_argument("--mim-args", default="", help="extra options for the MIM pretraining (experiments)")
    ap.add_argument("--ft-args", default="", help="extra options for every fine-tuning run (experiments)")
    ap.add_argument("--probe-args", default="", help="extra options for the linear probes (experiments)")
    ap.add_argument("--no-scratch", action="store_true")
    args = ap.parse_args()

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    common = ["--threads", str(args.threads), "--device", args.device, "--no-progress", "--workers", "0", "--overwrite",
              "--seed", str(args.seed)]
    few = ["--labels-per-class", str(args.labels_per_class)]
    ft_extra = shlex.split(args.ft_args)
    table: dict[str, float] = {}
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    def step(name: str, argv: list[str]) -> Path:
        t0 = time.perf_counter()
        run_cli(argv + common, log)
        times[name] = time.perf_counter() - t0
        return Path(argv[argv.index("--output") + 1])

    base = digits_pixel_baselines(args.labels_per_class, args.seed)
    table["pixels: logistic regression"] = base["pixel_logreg_top1"]
    table["pixels: 1-NN"] = base["pixel_1nn_top1"]

    if args.only in ("all", "mae"):
        if not args.no_scratch:
            r = step("hiera scratch", ["train", "--model", "hiera_nano", *few, "--output", str(out / "hiera_scratch"),
                                       *ft_extra])
            table["hiera_nano scratch"] = last_top1(r)
        mae = step("MAE pretrain", ["pretrain", "--method", "mae", "--model", "mae_hiera_nano",
                                    "--output", str(out / "mae_pretrain"), *shlex.split(args.pretrain_args)])
        ckpt = mae / "last.pt"
        r = step("MAE fine-tune", ["train", "--model", "hiera_nano", "--init", str(ckpt), *few,
                                   "--output", str(out / "mae_finetune"), *ft_extra])
        table["hiera_nano MAE -> fine-tune"] = last_top1(r)
        r = step("MAE linear probe", ["train", "--model", "hiera_nano", "--init", str(ckpt), *few, "--linear-probe",
                                      "--output", str(out / "mae_probe"), *shlex.split(args.probe_args)])
        table["hiera_nano MAE -> linear probe"] = last_top1(r)
        table["hiera_nano MAE -> k-NN (k=10)"] = knn("hiera_nano", r / "last.pt", args.labels_per_class, args.seed,
                                                      args.device, log)

    if args.only in ("all", "mim"):
        teacher = out / "mae_pretrain" / "last.pt"
        if not teacher.is_file():
            raise SystemExit(f"MIM needs the MAE teacher {teacher}: run with --only all or mae first")
        if not args.no_scratch:
            r = step("EVA-02 scratch", ["train", "--model", MIM_STUDENT, *few, "--output", str(out / "eva_scratch"),
                                        *ft_extra])
            table[f"{MIM_STUDENT} scratch"] = last_top1(r)
        mim = step("MIM pretrain", ["pretrain", "--method", "mim", "--model", MIM_STUDENT, "--teacher", "hiera_nano",
                                    "--teacher-checkpoint", str(teacher), "--output", str(out / "mim_pretrain"),
                                    *shlex.split(args.mim_args)])
        r = step("MIM fine-tune", ["train", "--model", MIM_STUDENT, "--init", str(mim / "last.pt"), *few,
                                   "--output", str(out / "mim_finetune"), *ft_extra])
        table[f"{MIM_STUDENT} MIM -> fine-tune"] = last_top1(r)
        r = step("MIM linear probe", ["train", "--model", MIM_STUDENT, "--init", str(mim / "last.pt"), *few,
                                      "--linear-probe", "--output", str(out / "mim_probe"),
                                      *shlex.split(args.probe_args)])
        table[f"{MIM_STUDENT} MIM -> linear probe"] = last_top1(r)
        table[f"{MIM_STUDENT} MIM -> k-NN (k=10)"] = knn(MIM_STUDENT, r / "last.pt", args.labels_per_class,
                                                                args.seed, args.device, log)

    total = time.perf_counter() - t_all
    log(f"\nval top-1 on the digits, {args.labels_per_class} labels per class "
        f"({args.device}, {args.threads} thread(s), torch {torch.__version__}):")
    w = max(len(k) for k in table)
    for k, v in table.items():
        log(f"  {k:<{w}}  {v:6.2f}%")
    log("time per step: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f"; total {total:.0f}s")
    (out / "table.json").write_text(json.dumps({"top1": table, "seconds": times, "total_s": total}, indent=1))
    plot(out)


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in sorted(out.iterdir()):
        f = run / "metrics.jsonl"
        if not f.is_file() or "pretrain" in run.name:
            continue
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if "val_top1" in r]
        ax.plot([r["epoch"] for r in rows], [r["val_top1"] for r in rows], "o-", ms=3, label=run.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fewlabel_curves.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
