"""EVA-02: bettervit vs timm, same process, same weights, same input (see benchmarks/README.md).

    PYTHONPATH=/work/main /work/refenv/bin/python benchmarks/bench_eva02.py [--models ...] [--batch 8] [--img 224]

For each model: timm's model is built, its state_dict loaded into ours (the key names are the same), and the two are
timed alternately by ``bettervit.bench.compare`` (so machine noise hits both alike): inference (eval,
inference_mode) and a training step (train mode, forward + backward). Reports the median img/s of ``--repeats`` runs
after ``--warmup``, the ratio, peak memory, and the max abs output difference. timm is optional: without it only
bettervit is timed.
"""
from __future__ import annotations

import argparse

import torch

import bettervit
from bettervit.bench import compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["eva02_tiny_patch14_224", "eva02_small_patch14_224"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import timm
    except ImportError:
        timm = None
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch {args.batch}, {args.img}x{args.img}"
          + (f", timm {timm.__version__}" if timm else ", timm not installed"))
    print("| model | mode | bettervit img/s | timm img/s | speed-up | peak MB (ours / timm) | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        ours = bettervit.create_model(name, img_size=args.img)
        models = {"bettervit": ours}
        if timm is not None:
            ref = timm.create_model(name, pretrained=False, img_size=args.img)
            ours.load_state_dict(ref.state_dict())
            models["timm"] = ref
        x = torch.randn(args.batch, 3, args.img, args.img)
        diff = float("nan")
        if timm is not None:
            with torch.inference_mode():
                diff = (ours.eval()(x) - models["timm"].eval()(x)).abs().max().item()
        for train in (False, True):
            r = {res.name: res for res in compare(models, x, train=train, warmup=args.warmup, repeats=args.repeats)}
            ours_ips = r["bettervit"].img_per_s
            t = r["timm"].img_per_s if "timm" in r else float("nan")
            mem = f"{r['bettervit'].peak_mb:.0f} / " + (f"{r['timm'].peak_mb:.0f}" if "timm" in r else "-")
            print(f"| {name} | {'train step' if train else 'inference'} | {ours_ips:.1f} | {t:.1f} | "
                  f"{ours_ips / t:.2f}x | {mem} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
