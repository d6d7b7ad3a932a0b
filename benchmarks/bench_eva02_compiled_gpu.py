"""EVA-02 training step on one GPU, bf16 autocast: bettervit vs timm, eager and under torch.compile, same weights,
same batch, timings interleaved round by round. Writes a JSON file with img/s, MFU and compile seconds.

    python benchmarks/bench_eva02_compiled_gpu.py [--model eva02_base_patch14_224] [--batch 128] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import bettervit

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # bf16 dense


def _step_fn(model, x, y):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="eva02_base_patch14_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="eva02_gpu.json")
    args = ap.parse_args()
    import timm

    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    torch.manual_seed(0)
    ref = timm.create_model(args.model, num_classes=1000).to(dev).train()
    ours = bettervit.create_model(args.model, num_classes=1000).to(dev).train()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    with FlopCounterMode(display=False) as fc:
        _step_fn(ours, x, y)()
    flops = fc.get_total_flops()
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))
    fns, compile_s = {}, {}
    for lib, m in [("timm", ref), ("bettervit", ours)]:
        fns[f"{lib} eager"] = _step_fn(m, x, y)
        cm = torch.compile(m)
        fn = _step_fn(cm, x, y)
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        fn()
        torch.cuda.synchronize()
        compile_s[lib] = time.perf_counter() - t
        fns[f"{lib} compiled"] = fn
        print(f"{lib} compiled in {compile_s[lib]:.0f} s", flush=True)
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            torch.cuda.synchronize()
            times[k].append((time.perf_counter() - t) / args.steps)
    res = {"device": name, "torch": torch.__version__, "timm": timm.__version__, "model": args.model,
           "batch": args.batch, "train_tflop_per_step": flops / 1e12, "compile_s": compile_s, "results": {}}
    for k, v in times.items():
        s = statistics.median(v)
        res["results"][k] = {"img_per_s": args.batch / s, "mfu": flops / s / 1e12 / peak}
        print(f"{k}: {args.batch / s:.0f} img/s, MFU {100 * flops / s / 1e12 / peak:.1f}%", flush=True)
    for mode in ("eager", "compiled"):
        r = res["results"][f"bettervit {mode}"]["img_per_s"] / res["results"][f"timm {mode}"]["img_per_s"]
        res[f"ratio_{mode}"] = r
        print(f"bettervit / timm {mode}: {r:.3f}x")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
