"""The GPU measurement set in one go: bettervit vs timm, bf16, eager and ``torch.compile``, inference and training.

    python3 benchmarks/bench_gpu.py [--out DIR] [--budget 330] [--models ...] [--parts ...]
    python benchmarks/bench_gpu.py --smoke --out /tmp/smoke     # CPU, nano models, no timm needed

Parts, in this order (the most informative first, so that a run cut short by ``--budget`` still says the most):
- ``eager``: img/s, peak memory and MFU of inference and a training step, batch 128, 224 px, bf16 autocast, for
  maxvit_tiny_tf_224, hiera_base_224 and eva02_base_patch14_224 (``bettervit.bench.compare``: implementations
  timed alternately, warm-up, median of repeats);
- ``memory``: peak GPU memory of one training step and one inference call at batch 32 for maxvit_large_tf_224,
  hiera_large_224 and eva02_large_patch14_224, each library alone on the GPU;
- ``compiled``: the same as ``eager`` under ``torch.compile`` (default mode), with the compile warm-up seconds and
  MFU (EVA02-B compiled training is the MFU goal), then ``check``: one compiled training step of bettervit against
  the eager one on the same batch (logits and all gradients, relative error within bf16 tolerance);
- ``profile``: ``torch.profiler`` kernel tables (top 30 by self device time) of both libraries, eager and compiled,
  inference and training, one text file per model.

A training step is ``zero_grad`` + forward + backward of a fp32 log-sum-exp loss (no optimizer step). timm's model
is built first (weights that timm initialises to zero, such as a classifier, are drawn from N(0, 0.02) so every
gradient is non-trivial) and its state dict loaded into bettervit's. Every measurement is in its own try/except:
a failure (e.g. a compile error) is recorded in the JSON with its message and the run goes on. Before each
measurement the remaining time is checked against ``--budget`` (seconds) and what does not fit is recorded as
skipped. Output, in ``--out`` (default ``$OUT`` when set, else ``bench_gpu_out``): ``results.json`` (rewritten
after every measurement), ``profile_<model>.txt``, ``log.txt``. At most 8 files.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bettervit next to this script, not an installed one
import bettervit  # noqa: E402
from bettervit import bench, weights  # noqa: E402

BASE = ["maxvit_tiny_tf_224", "hiera_base_224", "eva02_base_patch14_224"]
LARGE = ["maxvit_large_tf_224", "hiera_large_224", "eva02_large_patch14_224"]
# smoke: the smallest variant of each family at a small size, all runnable on a CPU in seconds
SMOKE = {"maxvit_nano": 64, "hiera_nano": 64, "eva02_tiny_patch14_224": 56}
SMOKE_LARGE = {"hiera_nano": 64}
PARTS = ("eager", "memory", "compiled", "check", "profile")
#: seconds a measurement of one model is expected to take (both libraries; compiled: cold Inductor caches, one H100,
#: as measured 2026-11-26: MaxViT-T inference compiled 61 s per library), to decide what still fits the budget
COST = {"eager": 10, "memory": 15, "compiled_infer": 130, "compiled_train": 240, "check": 120, "profile": 12}
# bf16 tolerance of a compiled training step against eager (relative L2 error over all logits / all gradients)
TOL_LOGITS, TOL_GRADS = 2e-2, 5e-2


class Run:
    """Results, the log and the time budget of one run."""

    def __init__(self, out: Path, budget: float, smoke: bool) -> None:
        self.out, self.budget, self.smoke = out, budget, smoke
        self.t0 = time.perf_counter()
        self.data: dict[str, Any] = {"setup": {}, "eager": {}, "memory": {}, "compiled": {}, "check": {},
                                     "profile": {}, "skipped": [], "errors": []}
        self.log_file = open(out / "log.txt", "w")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def fits(self, what: str, cost: float) -> bool:
        """Whether ``cost`` more seconds fit the budget; records ``what`` as skipped when not."""
        if self.elapsed() + (0 if self.smoke else cost) <= self.budget:
            return True
        self.data["skipped"].append(f"{what} (budget: {self.elapsed():.0f} s used of {self.budget:.0f})")
        self.log(f"skip {what}: budget")
        return False

    def attempt(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one measurement; an exception is logged and recorded, not raised."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one failure must not end the run
            msg = bench.short_error(e)
            self.data["errors"].append({"what": what, "error": msg, "traceback": traceback.format_exc()[-3000:]})
            self.log(f"FAILED {what}: {msg}")
            return None
        finally:
            self.save()

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.out / "results.json")


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------
def _on(device: torch.device, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model directly on the device (fast init of large models); on the CPU and move it if that fails."""
    try:
        with device:
            return build()
    except Exception:  # noqa: BLE001 - init code that insists on the CPU
        return build().to(device)


def build_pair(name: str, device: torch.device, img: int, use_timm: bool) -> tuple[nn.Module, nn.Module | None]:
    """(bettervit model, timm model with the same weights or None)."""
    torch.manual_seed(0)
    ours = _on(device, lambda: bettervit.create_model(name, img_size=img))
    ref = None
    if use_timm:
        import timm

        ref = _on(device, lambda: timm.create_model(name, pretrained=False, img_size=img))
        with torch.no_grad():
            for p in ref.parameters():  # timm zero-initialises some weights (classifiers): make gradients flow
                if p.dim() >= 2 and not p.any():
                    nn.init.normal_(p, std=0.02)
        weights.load_into(ours, ref.state_dict(), source="timm model")
    return ours, ref


def _models(ours: nn.Module, ref: nn.Module | None) -> dict[str, nn.Module]:
    return {"bettervit": ours, **({"timm": ref} if ref is not None else {})}


def _record(results: list[bench.Result], peak: float | None) -> dict[str, Any]:
    rows: dict[str, Any] = {r.name: r.as_dict(peak) for r in results}
    ok = [r for r in results if r.ok]
    if len(ok) == 2:
        rows["speedup"] = ok[0].img_per_s / ok[1].img_per_s
        if ok[0].peak_mb and ok[1].peak_mb:
            rows["memory_ratio"] = ok[0].peak_mb / ok[1].peak_mb
    return rows


def _summary_line(run: Run, tag: str, rec: dict[str, Any]) -> None:
    parts = []
    for k in ("bettervit", "timm"):
        r = rec.get(k)
        if r is None:
            continue
        if r["error"]:
            parts.append(f"{k}: {r['error']}")
        else:
            mfu = f" MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
            first = f" first call {r['first_call_s']:.1f}s" if r.get("first_call_s") else ""
            parts.append(f"{k} {r['img_per_s']:.0f} img/s{mfu} {r['peak_mb']:.0f} MB{first}")
    sp = f"  => {rec['speedup']:.2f}x" if "speedup" in rec else ""
    run.log(f"{tag}: " + "; ".join(parts) + sp)


# ---------------------------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------------------------
def measure_speed(run: Run, models: dict[str, nn.Module], name: str, x: torch.Tensor, amp: str, peak: float | None,
                  section: str, args: argparse.Namespace) -> None:
    for mode in ("infer", "train"):
        train = mode == "train"
        cost = COST["eager"] / 2 if section == "eager" else COST[f"compiled_{mode}"]
        if not run.fits(f"{section} {name} {mode}", cost):
            continue

        def go() -> None:
            try:
                flops = bench.model_flops(name, x.shape[0], x.shape[-1], train=train)
            except Exception as e:  # noqa: BLE001
                run.log(f"cannot count FLOPs of {name} on meta: {e}")
                flops = None
            res = bench.compare(models, x, train=train, warmup=args.warmup, repeats=args.repeats, amp=amp,
                                flops=flops, min_repeat_s=0.0 if run.smoke else 0.1)
            rec = _record(res, peak)
            run.data[section].setdefault(name, {})[mode] = rec
            _summary_line(run, f"{section} {name} {mode}", rec)

        run.attempt(f"{section} {name} {mode}", go)


def measure_memory(run: Run, name: str, img: int, batch: int, device: torch.device, amp: str, use_timm: bool) -> None:
    """Peak memory of one inference call and one training step of each library alone on the device (after one
    warm-up of each), above the weights; also the absolute peak (weights, gradients, activations) on CUDA."""
    rec: dict[str, Any] = {}
    libs = ["bettervit"] + (["timm"] if use_timm else [])
    for lib in libs:
        def go() -> None:
            torch.manual_seed(0)
            if lib == "bettervit":
                m = _on(device, lambda: bettervit.create_model(name, img_size=img))
            else:
                import timm

                m = _on(device, lambda: timm.create_model(name, pretrained=False, img_size=img))
            x = torch.randn(batch, 3, img, img, device=device)
            r: dict[str, Any] = {"params_mb": sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20}
            for mode in ("infer", "train"):
                train = mode == "train"
                m.train(train)
                step = bench.make_step(m, x, train, amp)
                step()  # warm-up (cuDNN / cuBLAS workspaces, lazy init)
                m.zero_grad(set_to_none=True)
                with bench.PeakMemory(device) as mem:
                    step()
                r[f"{mode}_peak_mb"] = mem.mb
                if device.type == "cuda":
                    r[f"{mode}_abs_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                m.zero_grad(set_to_none=True)
            rec[lib] = r
            del m, x
            if device.type == "cuda":
                torch.cuda.empty_cache()

        if run.fits(f"memory {name} {lib}", COST["memory"]):
            run.attempt(f"memory {name} {lib}", go)
    if "bettervit" in rec and "timm" in rec:
        for mode in ("infer", "train"):
            rec[f"{mode}_ratio"] = rec["bettervit"][f"{mode}_peak_mb"] / rec["timm"][f"{mode}_peak_mb"]
    run.data["memory"][name] = rec
    run.log(f"memory {name} batch {batch}: " + json.dumps(rec, default=lambda v: round(v, 1)))
    run.save()


def _grads(model: nn.Module, fn: Callable[[torch.Tensor], Any], x: torch.Tensor, amp: str):
    model.train()
    model.zero_grad(set_to_none=True)
    dtype = bench.AMP_DTYPES[amp]
    with torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        out = fn(x)
    bench.step_loss(out).backward()
    logits = (out[0] if isinstance(out, tuple) else out).detach().float()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logits, grads


def check_compiled_step(run: Run, name: str, ours: nn.Module, compiled: nn.Module, x: torch.Tensor, amp: str) -> None:
    """A compiled training step against the eager one on the same batch and weights: relative L2 error of the
    logits and of all gradients together, the worst parameter's, and whether both are within bf16 tolerance."""
    def go() -> None:
        le, ge = _grads(ours, ours, x, amp)
        lc, gc = _grads(ours, compiled, x, amp)
        missing = sorted(set(ge) ^ set(gc))
        num = sum(float((gc[k] - ge[k]).pow(2).sum()) for k in ge if k in gc)
        den = sum(float(ge[k].pow(2).sum()) for k in ge)
        per = {k: float((gc[k] - ge[k]).norm() / ge[k].norm().clamp_min(1e-12)) for k in ge if k in gc}
        worst = max(per, key=per.get) if per else None
        rec = {"logits_rel_err": float((lc - le).norm() / le.norm().clamp_min(1e-12)),
               "grads_rel_err": (num / max(den, 1e-30)) ** 0.5, "worst_param": worst,
               "worst_param_rel_err": per.get(worst), "params_with_grad": len(ge), "grad_keys_differ": missing}
        rec["ok"] = rec["logits_rel_err"] < TOL_LOGITS and rec["grads_rel_err"] < TOL_GRADS and not missing
        run.data["check"][name] = rec
        run.log(f"check {name} compiled vs eager training step: logits {rec['logits_rel_err']:.2e}, grads "
                f"{rec['grads_rel_err']:.2e} (worst {worst} {rec['worst_param_rel_err']:.2e}) -> "
                f"{'OK' if rec['ok'] else 'MISMATCH'}")

    if run.fits(f"check {name}", COST["check"]):
        run.attempt(f"check {name}", go)


def profile_tables(run: Run, name: str, impls: dict[str, nn.Module], x: torch.Tensor, amp: str,
                   device: torch.device) -> None:
    """torch.profiler tables (top 30 kernels by self device time; CPU ops on a CPU) into profile_<name>.txt."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path = run.out / f"profile_{name}.txt"
    with open(path, "w") as f:
        f.write(f"{name}, batch {x.shape[0]}, {x.shape[-2]}x{x.shape[-1]}, amp {amp}, {run.data['setup'].get('device_name')}, "
                f"torch {torch.__version__}; 3 steps each, after warm-up; sorted by {sort}\n\n")
    for impl, m in impls.items():
        for mode in ("infer", "train"):
            what = f"profile {name} {impl} {mode}"
            if not run.fits(what, COST["profile"] / 4):
                continue

            def go() -> None:
                train = mode == "train"
                m.train(train)
                step = bench.make_step(m, x, train, amp)
                step()
                bench._sync(device)
                with profile(activities=acts) as prof:
                    for _ in range(3):
                        step()
                    bench._sync(device)
                table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=90)
                with open(path, "a") as f:
                    f.write(f"=== {impl} {mode} ===\n{table}\n\n")
                run.data["profile"].setdefault(name, []).append(f"{impl} {mode}")
                if train:
                    m.zero_grad(set_to_none=True)

            run.attempt(what, go)


# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench_gpu_out")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds; what would not fit is skipped")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run: nano models, batch 2, no timm needed")
    ap.add_argument("--models", nargs="+", default=None, help=f"subset of {BASE} (default all)")
    ap.add_argument("--large", nargs="*", default=None, help=f"memory models (default {LARGE})")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--batch", type=int, default=None, help="speed batch (default 128; smoke 2)")
    ap.add_argument("--memory-batch", type=int, default=None, help="memory batch (default 32; smoke 2)")
    ap.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None, help="default bf16 (smoke: none on CPU)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile-backend", default=None, help="default inductor (smoke: aot_eager)")
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if any(p not in PARTS for p in parts):
        ap.error(f"--parts: expected a comma list of {', '.join(PARTS)}, got {args.parts!r}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, args.budget, args.smoke)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    if args.smoke:
        sizes = {m: SMOKE.get(m, 64) for m in (args.models or SMOKE)}
        large = {m: SMOKE_LARGE.get(m, SMOKE.get(m, 64)) for m in (args.large if args.large is not None else SMOKE_LARGE)}
        batch, mem_batch = args.batch or 2, args.memory_batch or 2
        backend = args.compile_backend or "aot_eager"
    else:
        sizes = {m: 224 for m in (args.models or BASE)}
        large = {m: 224 for m in (args.large if args.large is not None else LARGE)}
        batch, mem_batch = args.batch or 128, args.memory_batch or 32
        backend = args.compile_backend or "inductor"
    use_timm, timm_version = not args.no_timm, None
    if use_timm:
        try:
            import timm

            timm_version = timm.__version__
        except ImportError:
            if not args.smoke:
                run.log("timm is not importable: measuring bettervit alone")
            use_timm = False
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (bench.gpu_peak_tflops(dev_name, amp) if device.type == "cuda" else
                                bench.matmul_peak_gflops() / 1e3)
    run.data["setup"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "device_name": dev_name, "torch": torch.__version__,
        "cuda": torch.version.cuda, "timm": timm_version,
        "bettervit": bettervit.__version__, "python": sys.version.split()[0], "amp": amp, "batch": batch,
        "memory_batch": mem_batch, "img_sizes": sizes, "compile_backend": backend, "peak_tflops": peak,
        "budget_s": args.budget, "smoke": args.smoke, "parts": parts, "warmup": args.warmup,
        "repeats": args.repeats, "has_optimize": hasattr(bettervit, "optimize"),
        "train_step": "zero_grad + forward + backward of a fp32 log-sum-exp loss, no optimizer step",
        "memory": "peak above the weights (CUDA: max_memory_allocated) of one step after a warm-up step",
    }
    run.log(f"{dev_name}, torch {torch.__version__}, timm {run.data['setup']['timm']}, amp {amp}, batch {batch}, "
            f"peak {peak} TFLOP/s, budget {args.budget:.0f} s, parts {parts}")
    run.save()

    pairs: dict[str, tuple[nn.Module, nn.Module | None, torch.Tensor]] = {}
    if set(parts) & {"eager", "compiled", "check", "profile"}:
        for name, img in sizes.items():
            def build(name=name, img=img) -> None:
                ours, ref = build_pair(name, device, img, use_timm)
                torch.manual_seed(1)
                pairs[name] = (ours, ref, torch.randn(batch, 3, img, img, device=device))
            run.attempt(f"build {name}", build)

    if "eager" in parts:
        for name, (ours, ref, x) in pairs.items():
            measure_speed(run, _models(ours, ref), name, x, amp, peak, "eager", args)

    if "memory" in parts:
        for name, img in large.items():
            measure_memory(run, name, img, mem_batch, device, amp, use_timm)

    compiled: dict[str, dict[str, nn.Module]] = {}
    if "compiled" in parts:
        for name, (ours, ref, x) in pairs.items():
            mods = run.attempt(f"compile {name}", lambda: {k: torch.compile(m, backend=backend)
                                                           for k, m in _models(ours, ref).items()})
            if mods is None:
                continue
            compiled[name] = mods
            measure_speed(run, mods, name, x, amp, peak, "compiled", args)
            if "check" in parts:
                check_compiled_step(run, name, ours, mods["bettervit"], x, amp)
    elif "check" in parts:
        for name, (ours, _, x) in pairs.items():
            mod = run.attempt(f"compile {name}", lambda: torch.compile(ours, backend=backend))
            if mod is not None:
                check_compiled_step(run, name, ours, mod, x, amp)

    if "profile" in parts:
        for name, (ours, ref, x) in pairs.items():
            impls = {f"{k} eager": m for k, m in _models(ours, ref).items()}
            impls.update({f"{k} compiled": m for k, m in compiled.get(name, {}).items()})
            profile_tables(run, name, impls, x, amp, device)

    run.data["elapsed_s"] = run.elapsed()
    run.save()
    run.log(f"done in {run.elapsed():.0f} s; {len(run.data['errors'])} errors, {len(run.data['skipped'])} skipped; "
            f"results in {out / 'results.json'}")
    print_summary(run)
    return 0


def print_summary(run: Run) -> None:
    """A markdown table of the speed results (ratios bettervit / timm), for benchmarks/README.md."""
    d = run.data
    lines = ["| model | eager infer | eager train | compiled infer | compiled train | compiled train MFU (ours / timm) |",
             "|---|---|---|---|---|---|"]

    def cell(sec: str, name: str, mode: str) -> str:
        rec = d[sec].get(name, {}).get(mode)
        if not rec:
            return "—"
        b, t = rec.get("bettervit", {}), rec.get("timm", {})
        if b.get("error"):
            return "fails"
        if "speedup" in rec:
            return f"{rec['speedup']:.2f}x ({b['img_per_s']:.0f} / {t['img_per_s']:.0f})"
        return f"{b['img_per_s']:.0f} img/s"

    for name in {**d["eager"], **d["compiled"]}:
        tr = d["compiled"].get(name, {}).get("train", {})
        mfu = " / ".join(f"{100 * tr[k]['mfu']:.0f}%" if tr.get(k, {}).get("mfu") else "—" for k in ("bettervit", "timm"))
        lines.append(f"| {name} | {cell('eager', name, 'infer')} | {cell('eager', name, 'train')} | "
                     f"{cell('compiled', name, 'infer')} | {cell('compiled', name, 'train')} | {mfu} |")
    for name, rec in d["memory"].items():
        if "train_ratio" in rec:
            lines.append(f"memory {name} batch {d['setup']['memory_batch']}: train {rec['train_ratio']:.2f}x timm, "
                         f"infer {rec['infer_ratio']:.2f}x timm")
    for name, rec in d["check"].items():
        lines.append(f"compiled training step {name}: {'matches eager' if rec['ok'] else 'MISMATCH'} "
                     f"(logits {rec['logits_rel_err']:.1e}, grads {rec['grads_rel_err']:.1e})")
    run.log("summary\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
