"""Does the training method show in detection? Self-supervised pretraining on the detection images themselves
(labels removed), then the same detection fine-tune as from scratch, box and mask AP side by side.

ViTDet's central finding (Li et al. 2022): a plain ViT detector gains most from MAE pretraining, here on the images
it is later fine-tuned on. Per family, on the embedded digit scenes (the train scenes without their annotations):

- Hiera: ``bettervit pretrain --method mae`` (``mae_hiera_nano``), then ``bettervit detect train --backbone
  hiera_nano`` from scratch and with ``--init`` the MAE run's ``last.pt``;
- EVA-02: ``bettervit pretrain --method mim`` (student ``eva02_nano``, teacher the MAE-pretrained ``hiera_nano``
  above, so no label reaches either), then ``detect train --backbone eva02_nano`` (ViTDet: patch 16, windows) from
  scratch and from the MIM run.

With ``--label-scenes N`` the fine-tunes see the labels of the first N scenes only (pretraining still uses the images
of all ``--scenes``): the few-label case. Every fine-tuned ``last.pt`` is also evaluated on one common set
(``--eval-data``, by default the 300 default val scenes), so rows with different label counts compare.

Both fine-tunes of a family run the same command (the ``digit_scenes`` recipe: same learning rate, schedule, epochs,
seed), differing only in ``--init``. Every step is a CLI call whose run directory and log stay under ``--work``; a
finished step is reused, an interrupted one resumed (``--resume``), so the script can be re-run after a kill.

    PYTHONPATH=. python benchmarks/bench_detect_pretrain.py [--scenes 1200] [--label-scenes N] [--img-size 192] [--epochs 4]
        [--mae-epochs 30] [--mim-epochs 20] [--families hiera,eva02] [--hiera hiera_nano] [--pretrain-args '...']
        [--finetune-args '...'] [--threads 2] [--work runs/pretrain-pays]
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def finished_epochs(out: Path) -> int:
    """The last epoch the run in ``out`` recorded in its metrics.jsonl (0 if none)."""
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return int(json.loads(lines[-1])["epoch"]) if lines else 0


def run_step(work: Path, name: str, args: list[str], epochs: int) -> float:
    """Run ``python -m bettervit ARGS --output work/name`` unless that run already finished its ``epochs`` (then
    reuse it); resume a run directory left by an interrupted call. Returns the wall time in s (0 when reused)."""
    out = work / name
    if finished_epochs(out) >= epochs:
        print(f"  {name}: reusing the finished run in {out}", flush=True)
        return 0.0
    cmd = [sys.executable, "-m", "bettervit", *args, "--output", str(out), "--no-progress"]
    cmd.append("--resume" if (out / "last.pt").exists() else "--overwrite")
    log = work / f"{name}.log"
    print(f"  {name}: {' '.join(cmd[3:])}  (log: {log})", flush=True)
    t = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {log}")
    return time.perf_counter() - t


def detection_row(out: Path) -> dict:
    """box / mask AP (and AP50, AP75) in ``out/metrics.json``."""
    m = json.loads((out / "metrics.json").read_text())
    return {k: m.get(k) for k in ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75")}


def common_eval(run: Path, eval_data: str) -> dict:
    """``detect eval`` of the run's ``last.pt`` on ``eval_data`` (the same val scenes for every row), into
    ``run/eval_common`` (reused when there)."""
    out = run / "eval_common"
    if not (out / "metrics.json").exists():
        cmd = [sys.executable, "-m", "bettervit", "detect", "eval", "--checkpoint", str(run / "last.pt"), "--data",
               eval_data, "--output", str(out), "--overwrite"]
        with open(run.parent / f"{run.name}.log", "a") as f:
            if subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT) != 0:
                raise SystemExit(f"detect eval of {run} failed; see {run.parent / f'{run.name}.log'}")
    return detection_row(out)


def args_suffix(args: str) -> str:
    """A run-name suffix for extra CLI options, so runs with other settings get their own directories (and a finished
    run is reused only for the same settings): '--layer-decay 0.75' -> '_layer-decay_0.75'; '' -> ''."""
    return "".join("_" + t.lstrip("-") for t in shlex.split(args))


def pretrain_command(work: Path, fam: str, a: argparse.Namespace) -> tuple[str, str, list[str], int]:
    """(run name, backbone, CLI arguments, epochs) of the family's self-supervised pretraining on the scenes."""
    data, threads = f"digit-scenes:{a.scenes}", ["--threads", str(a.threads)]
    mae_model, extra = f"mae_{a.hiera}", shlex.split(a.pretrain_args)
    mae_run = mae_model + args_suffix(a.pretrain_args)
    if fam == "hiera":
        return mae_run, a.hiera, ["pretrain", "--method", "mae", "--model", mae_model, "--data", data, "--img-size",
                                  str(a.img_size), "--epochs", str(a.mae_epochs), *threads, *extra], a.mae_epochs
    mae = work / mae_run / "last.pt"
    if not mae.exists():
        raise SystemExit(f"EVA-02's MIM teacher is the MAE-pretrained {a.hiera}: run --families hiera first "
                         f"({mae} is missing)")
    mim_size = round(a.img_size / 14) * 14  # EVA-02 pretrains at patch 14; the detector re-embeds at 16
    mim = ["pretrain", "--method", "mim", "--model", "eva02_nano", "--teacher", a.hiera, "--teacher-checkpoint",
           str(mae), "--data", data, "--img-size", str(mim_size), "--epochs", str(a.mim_epochs), *threads, *extra]
    return "mim_eva02_nano" + args_suffix(a.pretrain_args), "eva02_nano", mim, a.mim_epochs


def family(work: Path, fam: str, a: argparse.Namespace) -> list[tuple]:
    pre_name, backbone, pre, pre_epochs = pretrain_command(work, fam, a)
    t_pre = run_step(work, pre_name, pre, pre_epochs)
    labels = a.label_scenes or a.scenes
    det = ["detect", "train", "--backbone", backbone, "--data", f"digit-scenes:{labels}", "--img-size",
           str(a.img_size), "--epochs", str(a.epochs), "--seed", str(a.seed), "--threads", str(a.threads),
           *shlex.split(a.finetune_args)]
    rows = []
    method = pre_name.split("_")[0].upper()  # MAE / MIM
    for init, extra in (("scratch", []), (method, ["--init", str(work / pre_name / "last.pt")])):
        name = f"det_{backbone}_{init.lower()}" + (f"_{labels}labelled_{a.epochs}ep" if a.label_scenes else "")
        name += args_suffix(a.finetune_args)
        if extra:  # the pretrained fine-tune depends on the pretraining options; scratch is shared across them
            name += args_suffix(a.pretrain_args)
        t = run_step(work, name, det + extra, a.epochs)
        rows.append((backbone, init, t_pre if extra else 0.0, t, detection_row(work / name),
                     common_eval(work / name, a.eval_data)))
    return rows


def _aps(m: dict, kind: str) -> str:
    return f"{m[kind + '_AP']:.1f} / {m[kind + '_AP50']:.1f} / {m[kind + '_AP75']:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=1200,
                    help="train scenes whose images pretrain (the demo's 1200), labelled for the fine-tune unless "
                         "--label-scenes")
    ap.add_argument("--label-scenes", type=int, default=None,
                    help="fine-tune on the first N of them only (their labels; val: a tenth, >= 16)")
    ap.add_argument("--finetune-args", default="",
                    help="extra `detect train` options for both fine-tunes, e.g. '--layer-decay 0.75'")
    ap.add_argument("--hiera", default="hiera_nano",
                    help="the Hiera backbone (MAE model: mae_<name>, e.g. hiera_tiny_224 -> mae_hiera_tiny_224)")
    ap.add_argument("--pretrain-args", default="",
                    help="extra `pretrain` options for the MAE and MIM runs, e.g. '--mask-ratio 0.25' (their own run "
                         "directories; the scratch fine-tune is shared)")
    ap.add_argument("--eval-data", default="digit-scenes:3000",
                    help="data every fine-tuned run is also evaluated on (default: the 300 default val scenes)")
    ap.add_argument("--img-size", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=4, help="detection fine-tune epochs (the demo's 4)")
    ap.add_argument("--mae-epochs", type=int, default=30)
    ap.add_argument("--mim-epochs", type=int, default=20)
    ap.add_argument("--families", default="hiera,eva02", help="comma list of hiera, eva02")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/pretrain-pays"))
    a = ap.parse_args(argv)
    fams = [f.strip() for f in a.families.split(",") if f.strip()]
    if not fams or any(f not in ("hiera", "eva02") for f in fams):
        ap.error(f"--families: expected a comma list of hiera, eva02, got {a.families!r}")
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"digit scenes: {a.scenes} train scenes at {a.img_size} px, detection fine-tune {a.epochs} epochs "
          f"(Mask R-CNN, digit_scenes recipe); work folder {a.work}", flush=True)
    rows = [r for f in fams for r in family(a.work, f, a)]
    print(f"\nbox / mask AP (COCO AP@[.5:.95], AP50, AP75, percent): on the run's own val scenes, and on the "
          f"{a.eval_data} val scenes (`detect eval` of last.pt)")
    print("| backbone | init | pretraining s | fine-tune s | box AP (run val) | mask AP (run val) | box AP (common) "
          "| mask AP (common) |")
    print("|---|---|---|---|---|---|---|---|")
    for backbone, init, t_pre, t_det, m, c in rows:
        print(f"| {backbone} | {init} | {t_pre:.0f} | {t_det:.0f} | {_aps(m, 'box')} | {_aps(m, 'mask')} | "
              f"{_aps(c, 'box')} | {_aps(c, 'mask')} |")
    for i in range(0, len(rows), 2):
        (s, sc), (p, pc) = rows[i][4:6], rows[i + 1][4:6]
        print(f"{rows[i][0]}: {rows[i + 1][1]} - scratch = box AP {p['box_AP'] - s['box_AP']:+.1f}, mask AP "
              f"{p['mask_AP'] - s['mask_AP']:+.1f} (run val); box AP {pc['box_AP'] - sc['box_AP']:+.1f}, mask AP "
              f"{pc['mask_AP'] - sc['mask_AP']:+.1f} (common val)")
    print("(pretraining / fine-tune seconds: 0 where a finished run was reused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
