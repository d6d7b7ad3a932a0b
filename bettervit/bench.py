"""Side-by-side speed measurement: bettervit against timm on the same weights, same process, same input.

``run_benchmark`` (the ``bettervit bench`` command) reports, per implementation, img/s for inference and for a
training step, milliseconds per step, peak memory, GFLOP per image, MFU and the seconds of the first call (for a
compiled model: compilation plus one step). Implementations are timed alternately repeat by repeat after a warm-up,
and the median is taken, so machine noise hits all alike; quote the ratios.

What is timed:
- inference: ``model.eval()`` under ``torch.inference_mode()`` (and autocast when ``amp`` is set);
- training step: ``model.train()``, ``zero_grad(set_to_none=True)``, forward under autocast, a fp32 log-sum-exp
  loss, ``backward()``; no optimizer step (it is the same for every implementation).

Implementations (``impls``): ``plain`` (the bettervit model as built), ``optimized`` (``bettervit.optimize(model)``,
the CPU inference pass; inference only), ``compiled`` (``torch.compile`` of the plain model), ``timm`` and
``timm-compiled`` (timm's model of the same name with bettervit's weights copied in; only when timm is importable).
On the CPU, compiled inference uses Inductor's freezing (weights folded into the graph as constants), as a
deployment would.

FLOPs are counted with ``torch.utils.flop_counter`` on the plain bettervit model built on the meta device (no memory,
no arithmetic): the forward for inference, forward + backward for a training step. MFU is those FLOPs per second
over the peak of the device: a table of known GPUs (dense bf16/fp16 tensor-core and fp32 peaks from the vendors'
data sheets) matched on ``torch.cuda.get_device_name``, the measured matmul throughput on the CPU, or
``peak_tflops`` when given.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import re
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .models.facts import (  # noqa: F401  (the model facts, re-exported for the benchmarks)
    count_flops, count_model, in_chans, model_flops, model_img_size, model_input_shape, step_loss,
)

log = logging.getLogger(__name__)

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
IMPLS = ("plain", "optimized", "compiled", "timm", "timm-compiled")

#: (regular expression on torch.cuda.get_device_name(), dense bf16/fp16 tensor-core TFLOP/s, fp32 TFLOP/s), vendor
#: data sheets; the first match wins, so the specific names (PCIe, NVL) come before the family's SXM default.
GPU_PEAK_TFLOPS: list[tuple[str, float, float]] = [
    (r"H100.*PCIe", 756.0, 51.0),
    (r"H100.*NVL", 835.0, 60.0),
    (r"H200.*NVL", 835.0, 60.0),
    (r"GH200", 989.0, 67.0),
    (r"H100", 989.0, 67.0),  # SXM
    (r"H200", 989.0, 67.0),
    (r"B200", 2250.0, 80.0),
    (r"A100", 312.0, 19.5),
    (r"L40S", 362.0, 91.6),
    (r"\bL4\b", 121.0, 30.3),
    (r"\bA10\b", 125.0, 31.2),
    (r"RTX 4090", 165.2, 82.6),
    (r"V100", 125.0, 15.7),  # fp16 only (no bf16)
    (r"\bT4\b", 65.0, 8.1),  # fp16 only
]


def gpu_peak_tflops(device_name: str, amp: str) -> float | None:
    """Peak TFLOP/s of a known GPU for autocast ``amp`` ('bf16'/'fp16': tensor cores, 'none': fp32), else None."""
    for pattern, half, fp32 in GPU_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return fp32 if amp == "none" else half
    return None


# ---------------------------------------------------------------------------------------------------------------
# Peak throughput
# ---------------------------------------------------------------------------------------------------------------
def matmul_peak_gflops(n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul throughput of this device in ``dtype`` (best of ``repeats``), MFU's denominator on a CPU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------
def _glibc():
    """The C library when it is glibc (whose malloc the tuning below speaks to), else None."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _mallopt(threshold: int) -> None:
    """Set glibc's mmap threshold (allocations at least this large are mmapped and unmapped on free) and its trim
    threshold (twice that, glibc's own rule). A no-op where libc is not glibc: peaks are then upper-bounded by what
    the allocator keeps."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD; setting it also stops glibc's dynamic adjustment
        libc.mallopt(-1, 2 * threshold)  # M_TRIM_THRESHOLD


def _return_freed_memory_to_os() -> None:
    """Hand the pages of freed heap blocks back to the OS, then serve every allocation >= 64 KiB by mmap and unmap
    it on free, so resident memory tracks live tensors (otherwise freed blocks stay resident and are reused without
    a page fault, and a peak reads as zero)."""
    _mallopt(65536)
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _keep_freed_memory() -> None:
    """Undo ``_return_freed_memory_to_os`` for timing: glibc's default dynamic thresholds grow to 32 MiB once large
    blocks are freed, so in a long run tensors are recycled from the heap; with a 64 KiB threshold every fresh
    tensor would be a page-faulting mmap, ~30% off a CPU training step, which no real run pays."""
    _mallopt(32 * 2**20)


class PeakMemory:
    """Peak memory of what runs inside, above what was allocated on entry (weights and input excluded).

    CUDA: ``torch.cuda.max_memory_allocated`` (the caching allocator's live tensors). CPU: resident memory sampled
    every millisecond, with freed heap pages handed back to the OS first so that it tracks live tensors."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        _return_freed_memory_to_os()
        self.base = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            _keep_freed_memory()

    @property
    def mb(self) -> float:
        return self.peak / 2**20


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------
def make_step(model: nn.Module, x: Tensor, train: bool, amp: str = "none") -> Callable[[], None]:
    """One inference call or one training step (see the module docstring) of ``model`` on ``x``."""
    dtype = AMP_DTYPES[amp]

    def autocast():
        return torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    if train:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            with autocast():
                out = model(x)
            step_loss(out).backward()
    else:
        def run() -> None:
            with torch.inference_mode(), autocast():
                model(x)
    return run


@dataclass
class Result:
    """One implementation in one mode. ``seconds``: per step, one entry per repeat (each the mean over
    ``steps_per_repeat`` steps). ``error``: why it did not run (then the numbers are empty)."""

    name: str
    mode: str  # "infer" | "train"
    batch: int
    seconds: list[float] = field(default_factory=list)
    steps_per_repeat: int = 1
    first_call_s: float | None = None
    flops: int | None = None  # per step (the whole batch)
    peak_mb: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.seconds)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def img_per_s(self) -> float:
        return self.batch / self.median_s if self.seconds else float("nan")

    def mfu(self, peak_tflops: float | None) -> float | None:
        if not self.ok or not self.flops or not peak_tflops:
            return None
        return self.flops / self.median_s / (peak_tflops * 1e12)

    def as_dict(self, peak_tflops: float | None = None) -> dict[str, Any]:
        d = asdict(self)
        d.update(img_per_s=self.img_per_s if self.ok else None, median_s=self.median_s if self.ok else None,
                 mfu=self.mfu(peak_tflops))
        return d


def short_error(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def compare(
    models: dict[str, nn.Module],
    x: Tensor,
    *,
    train: bool,
    warmup: int = 2,
    repeats: int = 5,
    amp: str = "none",
    flops: int | None = None,
    min_repeat_s: float = 0.0,
    measure_memory: bool = True,
) -> list[Result]:
    """Time each model on ``x``, interleaved repeat by repeat; per repeat, ``steps_per_repeat`` steps (enough to
    last ``min_repeat_s``, from the last warm-up step). An implementation that raises is reported with its error
    and left out of the rest. ``flops``: the step's FLOPs (the same model math for all); counted on the first model
    (with grad enabled, so no inference-only kernel hides from the counter) when None."""
    mode = "train" if train else "infer"
    dev = x.device
    results = {k: Result(k, mode, x.shape[0]) for k in models}
    steps: dict[str, Callable[[], None]] = {}
    for k, m in models.items():
        m.train(train)
        steps[k] = make_step(m, x, train, amp)
    if flops is None and models:
        first = next(iter(models.values()))
        try:
            with torch.enable_grad():
                flops = count_flops(steps[next(iter(models))] if train else (lambda: first(x)))
        except Exception as e:  # noqa: BLE001
            log.debug("cannot count FLOPs: %s", e)
    _warm_up(steps, results, dev, warmup, flops, mode, min_repeat_s)
    _timed_repeats(steps, results, dev, repeats)
    if measure_memory:
        for k, step in steps.items():  # peak memory of one more step, after the timings (it changes malloc's settings)
            with PeakMemory(dev) as mem:
                step()
            results[k].peak_mb = mem.mb
    for k, m in models.items():  # free the gradients of the training steps
        if train:
            m.zero_grad(set_to_none=True)
    return [results[k] for k in models]


def _warm_up(steps: dict[str, Callable[[], None]], results: dict[str, "Result"], dev: torch.device, warmup: int,
             flops: int | None, mode: str, min_repeat_s: float) -> None:
    """Warm-up calls (the first compiles a compiled model); sets each result's first-call time and steps per
    repeat (enough to last ``min_repeat_s``). An implementation that raises is reported and dropped from ``steps``."""
    last: dict[str, float] = {}
    for k, step in list(steps.items()):
        results[k].flops = flops
        try:
            for i in range(max(1, warmup)):
                _sync(dev)
                t = time.perf_counter()
                step()
                _sync(dev)
                last[k] = time.perf_counter() - t
                if i == 0:
                    results[k].first_call_s = last[k]
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            log.info("%s %s failed: %s", k, mode, short_error(e))
            results[k].error = short_error(e)
            del steps[k]
    for k in steps:
        results[k].steps_per_repeat = max(1, int(min_repeat_s / max(last[k], 1e-6)) + 1) if min_repeat_s else 1


def _timed_repeats(steps: dict[str, Callable[[], None]], results: dict[str, "Result"], dev: torch.device,
                   repeats: int) -> None:
    """``repeats`` rounds, interleaved implementation by implementation so drift hits all alike; appends seconds
    per step to each result. An implementation that raises is reported and dropped from ``steps``."""
    for _ in range(repeats):
        for k, step in list(steps.items()):
            n = results[k].steps_per_repeat
            try:
                _sync(dev)
                t = time.perf_counter()
                for _ in range(n):
                    step()
                _sync(dev)
                results[k].seconds.append((time.perf_counter() - t) / n)
            except Exception as e:  # noqa: BLE001
                results[k].error = short_error(e)
                del steps[k]


# ---------------------------------------------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------------------------------------------
def timm_model(name: str, ours: nn.Module, img_size: int | tuple[int, int] | None = None) -> nn.Module | None:
    """timm's model of the same name with *our* weights copied in, or None when timm is not importable or has no
    such model (the comparison then shows bettervit alone)."""
    try:
        import timm
    except ImportError:
        log.info("timm not importable: measuring bettervit alone")
        return None
    from . import weights

    kwargs: dict[str, Any] = {"num_classes": _num_classes(ours)}
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        try:
            ref = timm.create_model(name, pretrained=False, **kwargs)
        except TypeError:
            if "img_size" not in kwargs:
                raise
            # some timm models (e.g. sam2_hiera_*) take no img_size: build at the default, run at the input's size
            kwargs.pop("img_size")
            ref = timm.create_model(name, pretrained=False, **kwargs)
            log.info("timm's %s takes no img_size: built at its default size, fed the benchmark's", name)
    except Exception as e:  # noqa: BLE001 - no timm model of that name: measure ours alone
        log.info("timm has no %s (%s)", name, short_error(e))
        return None
    weights.load_into(ours, ref.state_dict(), source="timm model")  # same weights on both sides
    return ref


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    return int(n if n is not None else model.config.num_classes)


def optimize_fn() -> Callable[[nn.Module], nn.Module] | None:
    """``bettervit.optimize`` when this version has it, else None."""
    import bettervit

    return getattr(bettervit, "optimize", None)


def default_impls(device: torch.device, compile: bool, have_timm: bool) -> list[str]:
    """CPU: plain, optimized, timm eager and timm compiled (Inductor freezing) — the deployment comparison — plus
    bettervit compiled with ``compile``. CUDA: plain and timm eager, or both compiled with ``compile``."""
    if device.type == "cpu":
        impls = ["plain", "optimized"] + (["compiled"] if compile else [])
        return impls + (["timm", "timm-compiled"] if have_timm else [])
    impls = ["compiled"] if compile else ["plain"]
    return impls + ((["timm-compiled"] if compile else ["timm"]) if have_timm else [])


def _compile(model: nn.Module, mode: str | None, backend: str, fullgraph: bool = False) -> nn.Module:
    kwargs: dict[str, Any] = {"backend": backend, "fullgraph": fullgraph}
    if mode and backend == "inductor":
        kwargs["mode"] = mode
    return torch.compile(model, **kwargs)


def build_impls(
    impls: Sequence[str],
    ours: nn.Module,
    ref: nn.Module | None,
    *,
    train: bool,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """``({name: module to call}, {name: why skipped})`` for one mode. The optimized model is inference only; timm
    rows need timm."""
    out: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name in impls:
        if name == "plain":
            out[name] = ours
        elif name == "compiled":
            out[name] = _compile(ours, compile_mode, compile_backend)
        elif name == "optimized":
            opt = optimize_fn()
            if train:
                continue  # inference only
            if opt is None:
                skipped[name] = "bettervit.optimize not in this version"
            else:
                try:
                    out[name] = opt(ours)
                except Exception as e:  # noqa: BLE001
                    skipped[name] = short_error(e)
        elif name in ("timm", "timm-compiled"):
            if ref is None:
                skipped[name] = "timm not importable"
            else:
                out[name] = ref if name == "timm" else _compile(ref, compile_mode, compile_backend)
        else:
            raise ValueError(f"unknown implementation {name!r}; expected some of: {', '.join(IMPLS)}")
    return out, skipped


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------
def run_benchmark(
    model: str,
    batch_size: int = 8,
    img_size: int | None = None,
    repeats: int = 10,
    train: bool = True,
    device: str | torch.device = "cpu",
    *,
    amp: str | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    impls: Sequence[str] | None = None,
    warmup: int = 3,
    peak_tflops: float | None = None,
    use_timm: bool = True,
    json_path: str | os.PathLike | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure and print a side-by-side table for ``bettervit bench``; returns (and with ``json_path`` writes) the
    report: ``{"setup": {...}, "results": [Result.as_dict(), ...]}``.

    amp: None = bf16 on CUDA, none on the CPU. impls: None = :func:`default_impls`. Compiled training steps are
    measured only with ``compile`` or when ``impls`` names a compiled implementation.
    """
    from . import create_model

    dev = torch.device(device)
    amp = amp or ("bf16" if dev.type == "cuda" else "none")
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp: expected one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    torch.manual_seed(0)
    ours = create_model(model, img_size=img_size)
    h, w = model_img_size(ours)
    ref = timm_model(model, ours, img_size) if use_timm else None
    ours.to(dev)
    if ref is not None:
        ref.to(dev)
    explicit = impls is not None
    impls = list(impls) if explicit else default_impls(dev, compile, ref is not None)
    frames = model_input_shape(ours)[1:-2]  # video models: (T,)
    x = torch.randn(batch_size, in_chans(ours), *frames, h, w, device=dev)

    peak_tflops, peak_src = _resolve_peak(dev, amp, peak_tflops)
    setup = _setup(model, batch_size, (h, w), dev, amp, compile, compile_mode, peak_tflops, peak_src)
    _print_header(print_fn, setup, model, batch_size, (h, w), amp, compile, compile_mode, peak_tflops, peak_src)
    all_results: list[Result] = []
    for mode in (["infer", "train"] if train else ["infer"]):
        results = _bench_mode(mode, model, ours, ref, x, impls, explicit, compile, compile_mode, compile_backend,
                              warmup, repeats, amp)
        base = _ratio_base(results)
        for r in results:
            print_fn(_row(r, base, peak_tflops, batch_size))
        all_results += results
    print_fn("ratio: img/s over timm-compiled in the same mode where measured, else timm, else the first row")
    report = {"setup": setup, "results": [r.as_dict(peak_tflops) for r in all_results]}
    if json_path is not None:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    return report


def _print_header(print_fn: Callable[[str], None], setup: dict[str, Any], model: str, batch_size: int,
                  hw: tuple[int, int], amp: str, compile: bool, compile_mode: str | None, peak_tflops: float | None,
                  peak_src: str) -> None:
    """The set-up line, what a step is, and the column header of the table."""
    h, w = hw
    print_fn(f"{model}  batch {batch_size}  {h}x{w}  {setup['device_name']}  amp {amp}  "
             f"{'compile' + (f' ({compile_mode})' if compile_mode else '') if compile else 'eager'}  "
             f"torch {torch.__version__}  timm {setup['timm'] or '-'}  threads {torch.get_num_threads()}  "
             f"peak {_fmt_peak(peak_tflops)} ({peak_src})")
    print_fn("train step = zero_grad + forward + backward of a log-sum-exp loss (no optimizer step); "
             "peak MB above the weights; first s = first call (compilation for compiled models)")
    header = f"{'mode':<6}{'impl':<15}{'img/s':>10}{'ms/step':>10}{'ratio':>8}{'GFLOP/img':>11}{'MFU':>7}" \
             f"{'peak MB':>10}{'first s':>9}"
    print_fn(header)


def _ratio_base(results: list["Result"]) -> "Result | None":
    """The row ratios are taken against: timm-compiled where measured, else timm, else the first that ran."""
    ok = [r for r in results if r.ok]
    by_name = {r.name: r for r in ok}
    return by_name.get("timm-compiled") or by_name.get("timm") or (ok[0] if ok else None)


def _resolve_peak(dev: torch.device, amp: str, peak_tflops: float | None) -> tuple[float | None, str]:
    """The MFU denominator and where it came from: given, the GPU table, or a matmul measured here."""
    if peak_tflops is not None:
        return peak_tflops, "given"
    if dev.type == "cuda":
        peak = gpu_peak_tflops(torch.cuda.get_device_name(dev), amp)
        return peak, "table" if peak else "unknown GPU (pass --peak-tflops)"
    dtype = AMP_DTYPES[amp] or torch.float32
    return matmul_peak_gflops(device=dev, dtype=dtype) / 1e3, f"measured {str(dtype).replace('torch.', '')} matmul"


def _bench_mode(mode: str, model: str, ours: nn.Module, ref: nn.Module | None, x: Tensor, impls: list[str],
                explicit: bool, compile: bool, compile_mode: str | None, compile_backend: str, warmup: int,
                repeats: int, amp: str) -> list["Result"]:
    """One mode's rows (``infer`` or ``train``): builds the implementations, counts FLOPs on meta, times them."""
    is_train = mode == "train"
    batch_size, (h, w) = x.shape[0], x.shape[-2:]
    # compiled training steps only when asked for (on the CPU the defaults compile for inference alone)
    names = impls if (explicit or compile or not is_train) else [i for i in impls if not i.endswith("compiled")]
    try:
        flops = model_flops(model, batch_size, h if h == w else (h, w), train=is_train)
    except Exception as e:  # noqa: BLE001 - counted on the real model by compare()
        log.debug("%s: cannot count FLOPs on meta (%s)", model, e)
        flops = None
    mods, skipped = build_impls(names, ours, ref, train=is_train, compile_mode=compile_mode,
                                compile_backend=compile_backend)
    freeze = x.device.type == "cpu" and not is_train and compile_backend == "inductor"
    with _inductor_freezing() if freeze else contextlib.nullcontext():
        results = compare(mods, x, train=is_train, warmup=warmup, repeats=repeats, amp=amp, flops=flops,
                          min_repeat_s=0.05 if x.device.type == "cuda" else 0.0)
    return results + [Result(k, mode, batch_size, error=f"skipped: {why}") for k, why in skipped.items()]


def _fmt_peak(tflops: float | None) -> str:
    if not tflops:
        return "unknown"
    return f"{tflops:.0f} TFLOP/s" if tflops >= 10 else f"{tflops * 1e3:.0f} GFLOP/s"


def _row(r: Result, base: Result | None, peak_tflops: float | None, batch: int) -> str:
    if not r.ok:
        return f"{r.mode:<6}{r.name:<15}  {r.error}"
    ratio = r.img_per_s / base.img_per_s if base is not None else float("nan")
    gflop = r.flops / batch / 1e9 if r.flops else float("nan")
    mfu = r.mfu(peak_tflops)
    mfu_s = f"{100 * mfu:6.1f}%" if mfu is not None else f"{'-':>7}"
    mem = f"{r.peak_mb:>10.0f}" if r.peak_mb is not None else f"{'-':>10}"
    return (f"{r.mode:<6}{r.name:<15}{r.img_per_s:>10.2f}{1e3 * r.median_s:>10.2f}{ratio:>7.2f}x{gflop:>11.2f}"
            f"{mfu_s}{mem}{r.first_call_s or 0:>9.2f}")


@contextlib.contextmanager
def _inductor_freezing():
    """Inductor's freezing (parameters folded into the compiled inference graph) while compiled models compile."""
    try:
        from torch._inductor import config as inductor_config
    except ImportError:  # pragma: no cover - builds without Inductor
        yield
        return
    with inductor_config.patch(freezing=True):
        yield


def _setup(model: str, batch: int, hw: tuple[int, int], dev: torch.device, amp: str, compile: bool,
           compile_mode: str | None, peak_tflops: float | None, peak_src: str) -> dict[str, Any]:
    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {"model": model, "batch": batch, "img_size": list(hw), "device": str(dev), "device_name": name,
            "amp": amp, "compile": compile, "compile_mode": compile_mode, "peak_tflops": peak_tflops,
            "peak_source": peak_src, "torch": torch.__version__, "timm": timm_version,
            "threads": torch.get_num_threads(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
