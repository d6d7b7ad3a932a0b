"""Peak resident memory of one CPU fp32 inference, each library and model in its own fresh process.

What a user pays end to end: the process imports the library, builds the model (random init, no download), puts
it in eval mode (bettervit's ``optimized`` row also runs ``bettervit.optimize(model, inplace=True)``, as the CLI's
eval / predict do), then runs one forward under ``torch.no_grad``. Per case it prints the resident memory after the
build (the weights and the library), the process's peak resident memory (``ru_maxrss``: build, optimize and
forward together) and that peak over timm's, and the peak less the memory after the imports (the model's own
share, without the libraries' import footprints).

    PYTHONPATH=. .ref/bin/python benchmarks/bench_memory.py                      # the default set below
    PYTHONPATH=. .ref/bin/python benchmarks/bench_memory.py --models hiera_huge_224 --batch 1

Run it with an interpreter that has timm (the reference environment) so both libraries use the same torch; without
timm the timm rows are skipped. Memory does not depend on what else runs on the machine, time does: no timings here.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (model, batch): the large models at batch 1, the small ones at batch 8
DEFAULT_CASES = [
    ("eva02_large_patch14_224", 1), ("hiera_huge_224", 1), ("maxvit_large_tf_224", 1),
    ("maxvit_tiny_tf_224", 8), ("hiera_tiny_224", 8), ("eva02_tiny_patch14_224", 8), ("eva02_small_patch14_224", 8),
]
IMPLS = ("timm", "plain", "optimized")

# The child: everything happens in one fresh interpreter so ru_maxrss is this case's alone.
CHILD = r"""
import json, os, resource, sys
import torch
impl, name, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

if impl == "timm":
    import timm
    imported = rss_mb()
    model = timm.create_model(name, pretrained=False)
else:
    import bettervit
    imported = rss_mb()
    model = bettervit.create_model(name, pretrained=False)
model.eval()
if impl == "optimized":
    model = bettervit.optimize(model, inplace=True)
cfg = getattr(model, "pretrained_cfg", None) or {}
size = tuple(cfg.get("input_size", (3, 224, 224)))
built = rss_mb()
with torch.no_grad():
    model(torch.randn(batch, *size))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"import_mb": imported, "built_mb": built, "peak_mb": peak, "input": [batch, *size]}))
"""


def run_case(impl: str, name: str, batch: int, threads: int) -> dict | None:
    r = subprocess.run([sys.executable, "-c", CHILD, impl, name, str(batch), str(threads)], capture_output=True,
                       text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {impl:<10} {name}: failed ({last})", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def have_timm() -> bool:
    return subprocess.run([sys.executable, "-c", "import timm"], capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", help="model names (default: the issue's set, see DEFAULT_CASES)")
    ap.add_argument("--batch", type=int, help="batch size for --models (default 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    cases = [(m, args.batch or 1) for m in args.models] if args.models else DEFAULT_CASES
    impls = IMPLS if have_timm() else IMPLS[1:]
    print(f"peak resident memory of one fp32 CPU inference, one process per row ({sys.executable})")
    print("import: resident after importing torch and the library; built: after building the model (and optimize);"
          " peak: the process's maximum; model peak: peak - import (what the model and its forward add)")
    print(f"{'model':<26} {'batch':>5}  {'impl':<10} {'import':>7} {'built':>7} {'peak':>7} {'vs timm':>8} "
          f"{'model peak':>11} {'vs timm':>8}")
    rows = []
    for name, batch in cases:
        ref = ref_model = None
        for impl in impls:
            res = run_case(impl, name, batch, args.threads)
            if res is None:
                continue
            model_peak = res["peak_mb"] - res["import_mb"]
            if impl == "timm":
                ref, ref_model = res["peak_mb"], model_peak
            ratio = f"{res['peak_mb'] / ref:.2f}x" if ref else "-"
            ratio_model = f"{model_peak / ref_model:.2f}x" if ref_model else "-"
            print(f"{name:<26} {batch:>5}  {impl:<10} {res['import_mb']:>7.0f} {res['built_mb']:>7.0f} "
                  f"{res['peak_mb']:>7.0f} {ratio:>8} {model_peak:>11.0f} {ratio_model:>8}", flush=True)
            rows.append({"model": name, "batch": batch, "impl": impl, **res})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
