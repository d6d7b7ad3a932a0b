"""Side-by-side speed measurement (GUIDE §6): bettervit against timm on the same weights, same process, same input.

Reports img/s for inference and for a training step (forward + backward), peak memory, GMACs
(``torch.utils.flop_counter``) and MFU against this machine's measured fp32 matmul peak. Timings interleave the
implementations repeat by repeat and take the median, so machine noise hits both alike; quote the ratios.
"""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Measured fp32 matmul throughput of this machine, the denominator of MFU."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
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


class _PeakRSS:
    """Peak resident memory above the starting point, sampled every millisecond (CPU) or CUDA's own counter."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "_PeakRSS":
        if self.device.type == "cuda":
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

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            _keep_freed_memory()

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def _step(model: nn.Module, x: Tensor, train: bool) -> Callable[[], None]:
    if train:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            out.float().logsumexp(-1).mean().backward()
    else:
        def run() -> None:
            with torch.inference_mode():
                model(x)
    return run


@dataclass
class Result:
    name: str
    seconds: list[float]
    batch: int
    flops: int
    peak_mb: float

    @property
    def img_per_s(self) -> float:
        return self.batch / statistics.median(self.seconds)


def compare(models: dict[str, nn.Module], x: Tensor, *, train: bool, warmup: int = 2, repeats: int = 5) -> list[Result]:
    """Time each model on ``x``, interleaved repeat by repeat; median seconds per call."""
    for m in models.values():
        m.train(train)
    steps = {k: _step(m, x, train) for k, m in models.items()}
    flops, peaks = {}, {}
    for k, step in steps.items():
        # FLOPs of the plain forward (grad enabled, so no fused inference kernels hide from the counter); a training
        # step counts 3x the forward (backward = 2x forward), the usual MFU convention.
        with torch.enable_grad():
            flops[k] = count_flops(lambda: models[k](x)) * (3 if train else 1)
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            _sync(x.device)
            t = time.perf_counter()
            step()
            _sync(x.device)
            times[k].append(time.perf_counter() - t)
    for k, step in steps.items():  # peak memory of one more step, after the timings (it changes malloc's settings)
        with _PeakRSS(x.device) as mem:
            step()
        peaks[k] = mem.mb
    return [Result(k, times[k], x.shape[0], flops[k], peaks[k]) for k in steps]


def measure(model: nn.Module, x: Tensor, train: bool, warmup: int = 2, repeats: int = 5) -> dict:
    """One model: {img_per_s, peak_mem_mb, gflops}."""
    r = compare({"model": model}, x, train=train, warmup=warmup, repeats=repeats)[0]
    return {"img_per_s": r.img_per_s, "peak_mem_mb": r.peak_mb, "gflops": r.flops / 1e9}


def reference_models(name: str, ours: nn.Module, img_size: int) -> dict[str, nn.Module]:
    """timm's model of the same name with *our* weights copied in, when timm is importable."""
    try:
        import timm
    except ImportError:
        log.info("timm not importable: measuring bettervit alone")
        return {}
    from . import weights

    try:
        ref = timm.create_model(name, pretrained=False, num_classes=ours.config.num_classes)
    except Exception as e:  # noqa: BLE001 - no timm model of that name: measure ours alone
        log.info("timm has no %s (%s)", name, e)
        return {}
    weights.load_into(ours, ref.state_dict(), source="timm model")  # same weights on both sides
    return {f"timm {timm.__version__}": ref}


def run_benchmark(
    model: str,
    batch_size: int = 8,
    img_size: int | None = None,
    repeats: int = 5,
    train: bool = True,
    device: str = "cpu",
    extra: dict[str, nn.Module] | None = None,
) -> list[tuple[str, list[Result]]]:
    """Print a table for ``bettervit bench`` and return the raw results."""
    from . import create_model

    ours = create_model(model, img_size=img_size)
    size = ours.config.img_size
    models = {"bettervit": ours, **reference_models(model, ours, size), **(extra or {})}
    for m in models.values():
        m.to(device)
    x = torch.randn(batch_size, 3, size, size, device=device)
    peak = matmul_peak_gflops(device=device)
    print(f"{model}  batch {batch_size}  {size}x{size}  fp32  {device}  threads {torch.get_num_threads()}  "
          f"torch {torch.__version__}  matmul peak {peak:.0f} GFLOP/s")
    print(f"{'mode':<10}{'impl':<16}{'img/s':>9}{'ratio':>8}{'GMACs/img':>11}{'MFU':>7}{'peak MB':>9}  (train GMACs = 3x fwd)")
    out = []
    for mode in (["infer", "train"] if train else ["infer"]):
        results = compare(models, x, train=mode == "train", repeats=repeats)
        base = results[-1].img_per_s if len(results) > 1 else results[0].img_per_s
        for r in results:
            gmacs = r.flops / 2 / batch_size / 1e9
            mfu = r.flops / statistics.median(r.seconds) / 1e9 / peak
            print(f"{mode:<10}{r.name:<16}{r.img_per_s:>9.2f}{r.img_per_s / base:>7.2f}x{gmacs:>11.2f}"
                  f"{100 * mfu:>6.1f}%{r.peak_mb:>9.0f}")
        out.append((mode, results))
    return out
