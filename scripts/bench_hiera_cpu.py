"""CPU fp32 speed of Hiera, this tree against an older bettervit (e.g. the last commit with the CPU fast paths inside
the model), interleaved in one process so both see the same machine load.

    git archive ea7e60f bettervit | tar -x -C /tmp/old && mv /tmp/old/bettervit /tmp/old/bettervit_old
    PYTHONPATH=/tmp/old python scripts/bench_hiera_cpu.py --what infer train

infer: batch 8 at 224, ``bettervit.optimize(model)`` (this tree) vs the old model's eval forward (fast paths inside).
train: forward + backward + SGD step, batch 8 at 224, the plain model (this tree) vs the old model, the latter also
with its CPU training chunking switched off. Prints the median seconds per step and the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="hiera_tiny_224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--what", nargs="+", default=["infer", "train"])
    args = ap.parse_args()
    import bettervit
    import bettervit_old

    torch.manual_seed(0)
    new = bettervit.create_model(args.model)
    old = bettervit_old.create_model(args.model)
    old.load_state_dict(new.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.model}, batch {args.batch}, {args.size}px", flush=True)

    if "infer" in args.what:
        fast = bettervit.optimize(new)
        old.eval()
        with torch.no_grad():
            a, b = fast(x), old(x)
        print(f"  optimized vs old fast path: max |diff| {(a - b).abs().max().item():.2e}")
        runs = {"new optimize()": lambda: fast(x), "old eval": lambda: old(x)}
        times = {k: [] for k in runs}
        with torch.no_grad():
            for f in runs.values():
                f()
            for _ in range(args.rounds):
                for k, f in runs.items():
                    times[k].append(timed(f, 3))
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"  infer {k:28s} {v * 1e3:8.1f} ms/batch")
        print(f"  infer speed new/old: {med['old eval'] / med['new optimize()']:.3f}x")

    if "train" in args.what:
        new.train()
        old.train()
        nochunk = bettervit_old.create_model(args.model).train()
        nochunk.load_state_dict(new.state_dict())
        for blk in nochunk.blocks:
            blk.train_chunk_tokens = 1 << 30

        def step(model, opt):
            def run():
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return run

        runs = {name: step(m, torch.optim.SGD(m.parameters(), lr=1e-6))
                for name, m in (("new plain", new), ("old", old), ("old, no train chunking", nochunk))}
        times = {k: [] for k in runs}
        for f in runs.values():
            f()
        for r in range(args.rounds):
            for k, f in runs.items():
                times[k].append(timed(f, 1))
            print(f"  round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"  train {k:28s} {v * 1e3:8.1f} ms/step")
        print(f"  train speed new/old: {med['old'] / med['new plain']:.3f}x; "
              f"old chunked vs not: {med['old, no train chunking'] / med['old']:.3f}x")


if __name__ == "__main__":
    main()
