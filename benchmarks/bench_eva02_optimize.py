"""EVA-02 CPU speed: ``bettervit.optimize(model)`` and the plain model against an older bettervit (whose CPU fast
paths lived inside the model), same process, same weights, same input, timings interleaved.

    git archive ea7e60f bettervit | tar -x -C /tmp/old && mv /tmp/old/bettervit /tmp/old/bettervit_old
    python benchmarks/bench_eva02_optimize.py --old /tmp/old [--models ...] [--batch 8] [--img 224] [--threads 2]

Inference: old (eval, inference_mode: its in-model oneDNN path), optimized, plain. Training step (forward + backward
+ SGD step, train mode): old vs plain. Median seconds per call over ``--repeats``; ratios > 1 mean the new code is
faster.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch

import bettervit
from bettervit.optimize import optimize


def _time(fns: dict, warmup: int, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _infer(model, x):
    def run():
        with torch.inference_mode():
            model(x)
    return run


def _train(model, x):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def run():
        opt.zero_grad(set_to_none=True)
        model(x).logsumexp(-1).sum().backward()
        opt.step()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="directory holding the old package as bettervit_old/")
    ap.add_argument("--models", nargs="+", default=["eva02_tiny_patch14_224", "eva02_small_patch14_224"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-train", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.old)
    old_pkg = importlib.import_module("bettervit_old")
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch {args.batch}, {args.img}x{args.img}")
    print("| model | old infer s | optimized s | plain s | optimized vs old | plain vs old | old train s | "
          "plain train s | train vs old | max diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        new = bettervit.create_model(name, num_classes=1000).eval()
        old = old_pkg.create_model(name, num_classes=1000).eval()
        old.load_state_dict(new.state_dict())
        fast = optimize(new)
        x = torch.randn(args.batch, 3, args.img, args.img)
        with torch.inference_mode():
            diff = max((fast(x) - old(x)).abs().max().item(), (new(x) - old(x)).abs().max().item())
        t = _time({"old": _infer(old, x), "opt": _infer(fast, x), "plain": _infer(new, x)}, args.warmup, args.repeats)
        row = [t["old"], t["opt"], t["plain"], t["old"] / t["opt"], t["old"] / t["plain"]]
        if args.no_train:
            row += [float("nan")] * 3
        else:
            del fast
            tt = _time({"old": _train(old.train(), x), "plain": _train(new.train(), x)}, 1, max(3, args.repeats // 2))
            row += [tt["old"], tt["plain"], tt["old"] / tt["plain"]]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
