"""Hiera for video: bettervit vs the official hiera-transformer, same process, same weights, same clip.

    PYTHONPATH=. .ref/bin/python benchmarks/bench_hiera_video.py [--models hiera_base_16x224] [--batch 1]

The official model is built (its own random init) and its state dict loaded into ours through our checkpoint key
map; the logits are compared, then ``bettervit.bench.compare`` times both alternately: inference (eval,
no grad) and a training step (train mode, forward + backward of a log-sum-exp loss). timm has no video Hiera.
The official head softmaxes in eval mode; it is bypassed so both return logits.
"""
from __future__ import annotations

import argparse

import torch

import bettervit
from bettervit import weights
from bettervit.bench import compare


def official_at(hiera, name: str, input_size: tuple[int, int, int]):
    """The official video model ``name`` built for another clip size: its constructor's arguments, read off a
    full-size instance (widths, depths, heads), passed to ``hiera.Hiera`` with ``input_size``."""
    ref = getattr(hiera, name)(pretrained=False)
    return hiera.Hiera(input_size=input_size, embed_dim=ref.blocks[0].dim, num_heads=ref.blocks[0].attn.heads,
                       stages=tuple(ref.stage_ends[i] - (ref.stage_ends[i - 1] if i else -1) for i in range(4)),
                       num_classes=400, q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
                       patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["hiera_base_16x224"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import hiera  # the official package (reference environment)

    print(f"clip {args.batch} x 3 x {args.frames} x {args.img} x {args.img}, fp32 CPU, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}")
    print("| model | mode | bettervit clips/s | official clips/s | speed-up | peak MB (ours / official) | max |logit diff| |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        if (args.frames, args.img) == (16, 224):
            off = getattr(hiera, name)(pretrained=False)
        else:  # the official video constructors fix input_size: build the class with another one
            off = official_at(hiera, name, (args.frames, args.img, args.img))
        off.head.act_func = lambda z: z  # logits in eval mode too
        ours = bettervit.create_model(name, img_size=args.img)
        weights.load_into(ours, off.state_dict(), source="official model")
        x = torch.randn(args.batch, 3, args.frames, args.img, args.img)
        with torch.no_grad():
            diff = (ours.eval()(x) - off.eval()(x)).abs().max().item()
        for train in (False, True):
            ours.train(train), off.train(train)
            res = {r.name: r for r in compare({"bettervit": ours, "official": off}, x, train=train, warmup=1,
                                              repeats=args.repeats)}
            a, b = res["bettervit"], res["official"]
            print(f"| {name} | {'train' if train else 'infer'} | {a.img_per_s:.3f} | {b.img_per_s:.3f} | "
                  f"{a.img_per_s / b.img_per_s:.2f}x | {a.peak_mb:.0f} / {b.peak_mb:.0f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
