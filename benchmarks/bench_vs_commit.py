"""Plain-model training (or inference) speed of this checkout against an earlier commit, in one process.

The earlier package is extracted with ``git archive`` into a temporary folder and imported as ``bettervit_old``
(the package uses relative imports only, so the rename is all it takes). Both models get the same weights (the
state dict of this checkout's model, loaded strictly), are checked to agree on a forward, and are timed with
``bettervit.bench.compare``: alternating repeat by repeat, median of the repeats.

    python benchmarks/bench_vs_commit.py --commit ea7e60f                 # training steps, batch 8, 224 px
    python benchmarks/bench_vs_commit.py --commit ea7e60f --infer --models hiera_tiny_224

The ratio is this checkout's speed over the earlier one's (> 1: faster now). Quote ratios from one run.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("maxvit_tiny_tf_224", "hiera_tiny_224", "eva02_tiny_patch14_224")


def import_old(commit: str, where: Path):
    """Extract ``bettervit/`` at ``commit`` into ``where/bettervit_old`` and import it."""
    blob = subprocess.run(["git", "-C", str(REPO), "archive", commit, "bettervit"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(blob.stdout)) as tar:
        tar.extractall(where, filter="data")
    (where / "bettervit").rename(where / "bettervit_old")
    sys.path.insert(0, str(where))
    import bettervit_old

    return bettervit_old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--infer", action="store_true", help="time inference instead of training steps")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    import bettervit
    from bettervit import bench

    with tempfile.TemporaryDirectory() as tmp:
        old_pkg = import_old(args.commit, Path(tmp))
        mode = "inference" if args.infer else "training step"
        print(f"{mode}, batch {args.batch_size}, fp32 CPU, {torch.get_num_threads()} threads, torch {torch.__version__}: "
              f"this checkout vs {args.commit}")
        for name in args.models:
            torch.manual_seed(0)
            new, old = bettervit.create_model(name), old_pkg.create_model(name)
            old.load_state_dict(new.state_dict(), strict=True)
            size = new.pretrained_cfg["input_size"][-2:] if getattr(new, "pretrained_cfg", None) else (224, 224)
            x = torch.randn(args.batch_size, 3, *size)
            with torch.no_grad():
                diff = (new.eval()(x[:2]) - old.eval()(x[:2])).abs().max().item()
            new.train(not args.infer), old.train(not args.infer)
            now, before = bench.compare({"now": new, "before": old}, x, train=not args.infer, warmup=2,
                                        repeats=args.repeats, measure_memory=False)
            print(f"{name:<26} max|logit diff| {diff:.1e}  now {now.median_s * 1e3:7.0f} ms  before "
                  f"{before.median_s * 1e3:7.0f} ms  speed now / before {before.median_s / now.median_s:.2f}x",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
