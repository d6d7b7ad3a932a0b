"""Hiera: bettervit vs timm vs the official hiera-transformer, same process, same weights, same input (see benchmarks/README.md).

    PYTHONPATH=/work/main /work/refenv/bin/python benchmarks/bench_hiera.py [--models hiera_tiny_224] [--batch 8]

timm's model is built and its state dict loaded into ours and (keys renamed: ``head.fc.`` -> ``head.projection.``,
``head.norm.`` -> ``norm.``) into the official model. ``bettervit.bench.compare`` times them alternately (machine
noise hits all alike): inference (eval, inference_mode) and a training step (train mode, forward + backward).
Median img/s of ``--repeats`` runs after ``--warmup``; speed-ups are ours over each reference. timm is required
(the weights come from its model); the official package is optional.
"""
from __future__ import annotations

import argparse

import torch

import bettervit
from bettervit.bench import compare


def official_model(name: str, timm_sd: dict[str, torch.Tensor], img: int):
    try:
        import hiera
    except ImportError:
        return None
    model = getattr(hiera, name)(pretrained=False, input_size=(img, img))
    sd = {k.replace("head.fc.", "head.projection.").replace("head.norm.", "norm."): v for k, v in timm_sd.items()}
    model.load_state_dict(sd)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["hiera_tiny_224"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import timm  # required: the weights come from timm's model

    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch {args.batch}, {args.img}x{args.img}, "
          f"timm {timm.__version__}")
    print("| model | mode | bettervit img/s | timm img/s | official img/s | vs timm | vs official | "
          "peak MB (ours / timm / official) | max abs diff (timm, official) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        ref = timm.create_model(name, pretrained=False, img_size=args.img)
        torch.nn.init.normal_(ref.head.fc.weight, std=0.02)  # timm zero-inits it; a real head makes diffs meaningful
        ours = bettervit.create_model(name, img_size=args.img)
        bettervit.weights.load_into(ours, ref.state_dict())
        models = {"bettervit": ours, "timm": ref}
        off = official_model(name, ref.state_dict(), args.img)
        if off is not None:
            off.head.act_func = lambda z: z  # compare logits (the official head softmaxes in eval mode)
            models["official"] = off
        x = torch.randn(args.batch, 3, args.img, args.img)
        with torch.inference_mode():
            y = ours.eval()(x)
            diffs = [(y - m.eval()(x)).abs().max().item() for k, m in models.items() if k != "bettervit"]
        for train in (False, True):
            r = {res.name: res for res in compare(models, x, train=train, warmup=args.warmup, repeats=args.repeats)}
            ips = {k: v.img_per_s for k, v in r.items()}
            nan = float("nan")
            mem = " / ".join(f"{r[k].peak_mb:.0f}" if k in r else "-" for k in ("bettervit", "timm", "official"))
            print(f"| {name} | {'train step' if train else 'inference'} | {ips['bettervit']:.2f} | {ips['timm']:.2f} | "
                  f"{ips.get('official', nan):.2f} | {ips['bettervit'] / ips['timm']:.2f}x | "
                  f"{ips['bettervit'] / ips.get('official', nan):.2f}x | {mem} | "
                  + ", ".join(f"{d:.1e}" for d in diffs) + " |", flush=True)


if __name__ == "__main__":
    main()
