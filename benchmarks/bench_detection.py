"""Backbones at detection sizes: 1024 x 1024 (EVA-02 with 14-px patches: 1022), batch 1, fp32 on the CPU.

Two kinds of rows, each a forward (inference, no grad) and a training step (forward + backward of a log-sum-exp of
the features, no optimizer step), timed with ``bettervit.bench.compare`` (alternating implementations, median) and
peak resident memory above the weights:

1. ``vs timm``: bettervit's model and timm's, both *created at that size* (timm's rule: MaxViT's partition becomes
   img_size / 32 = 32, so its windows hold 1024 tokens), same weights. Needs timm (run with the reference env).
2. ``detector``: what a detector runs, bettervit only (timm has no equivalent): MaxViT *built at 224* and run at
   1024 (the trained 7 x 7 partition, stage maps padded to it and the padding masked), the EVA-02 ViTDet backbone
   (``vitdet_eva02``: 16-px patches, 14 x 14 windows of 16 tokens, 4 global blocks, simple feature pyramid) and
   SAM2's HieraDet at 1024; features_only where the family has it, so the loss sees every pyramid level.

    PYTHONPATH=. .ref/bin/python benchmarks/bench_detection.py [--repeats 3] [--only vs-timm|detector]

The machine is noisy: quote ratios from one run. On a GPU, ``bettervit bench --device cuda --img-size 1024`` gives
the bf16 numbers of the ``vs timm`` rows.
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import Tensor, nn

import bettervit
from bettervit import bench
from bettervit.models.vitdet import vitdet_eva02


class FeatureSum(nn.Module):
    """A features_only / pyramid model as a single-output module for ``bench.compare`` (the loss then sums a
    log-sum-exp over every map, so the backward reaches every level)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        maps = out.values() if isinstance(out, dict) else out
        return torch.stack([m.float().flatten(1).logsumexp(1) for m in maps], 1)


def vs_timm(repeats: int) -> None:
    for name, size in (("maxvit_tiny_tf_224", 1024), ("hiera_tiny_224", 1024), ("eva02_tiny_patch14_224", 1022)):
        bench.run_benchmark(name, batch_size=1, img_size=size, repeats=repeats, warmup=1, impls=["plain", "timm"])
        print(flush=True)


def detector_rows(repeats: int) -> None:
    cases = {
        "maxvit_tiny_tf_224 built at 224, features_only": (
            FeatureSum(bettervit.create_model("maxvit_tiny_tf_224", features_only=True)), 1024),
        "vitdet_eva02 (eva02_base trunk) + pyramid": (FeatureSum(vitdet_eva02("eva02_base_patch14_224")), 1024),
        "sam2_hiera_tiny, features_only": (
            FeatureSum(bettervit.create_model("sam2_hiera_tiny", features_only=True, img_size=1024)), 1024),
    }
    print("detector rows: bettervit alone, batch 1, fp32 CPU")
    print(f"{'model':<48}{'mode':<7}{'s/img':>8}{'peak MB':>10}")
    for label, (model, size) in cases.items():
        x = torch.randn(1, 3, size, size)
        for train in (False, True):
            model.train(train)
            (r,) = bench.compare({"plain": model}, x, train=train, warmup=1, repeats=repeats)
            mode = "train" if train else "infer"
            print(f"{label:<48}{mode:<7}{r.median_s:>8.2f}{r.peak_mb if r.peak_mb is not None else float('nan'):>10.0f}"
                  if r.ok else f"{label:<48}{mode:<7} failed: {r.error}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["vs-timm", "detector"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.only != "detector":
        vs_timm(args.repeats)
    if args.only != "vs-timm":
        detector_rows(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
