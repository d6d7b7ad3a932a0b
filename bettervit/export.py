"""Export a model for deployment: ``torch.export`` (a ``.pt2`` file) or ONNX through torch's current exporter
(``torch.onnx.export(..., dynamo=True)``, built on ``torch.export``), then check the exported file against eager.

The batch dimension is exported as dynamic, and the height and width too where the model takes other sizes at run
time (any multiple of the model's stride); the report says what the export ended up with (``torch.export`` may
narrow a dimension to a range). After writing, the file is loaded back (``torch.export.load`` or onnxruntime) and
its logits on inputs of batch sizes other than the exported example's (and, with a dynamic H x W, on another size)
are compared with the eager model's.

ONNX needs the optional packages ``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install bettervit[export]``).
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .models.base import img_size_hw
from .models.facts import in_chans, model_img_size

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
#: example batch of the export: 2, since torch.export specialises a dimension whose example size is 0 or 1
EXPORT_BATCH = 2
#: batch sizes the exported file is checked on (all differ from EXPORT_BATCH)
VERIFY_BATCHES = (1, 3)


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not reproduce the eager model (then ``report``
    holds the comparison and the file is kept for inspection)."""

    def __init__(self, message: str, report: "ExportReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ExportReport:
    """What was written and how it compares with eager."""

    path: Path
    format: str
    input_shape: tuple[int, ...]  # the example input of the export
    dynamic_batch: bool
    dynamic_hw: bool
    batch_range: tuple[int, int | None] | None = None  # what torch.export allows for the batch (None: unbounded)
    hw_multiple: int | None = None  # with a dynamic H x W: each side a multiple of this
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    max_abs_diff: float | None = None
    atol: float = 1e-4
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff is not None and self.max_abs_diff <= self.atol

    def summary(self) -> str:
        size = self.path.stat().st_size / 2**20 if self.path.exists() else float("nan")
        b = "dynamic" if self.dynamic_batch else "static"
        if self.dynamic_batch and self.batch_range is not None:
            lo, hi = self.batch_range
            b += f" ({lo}..{hi if hi is not None else 'inf'})"
        hw = f"dynamic (multiples of {self.hw_multiple})" if self.dynamic_hw else "static"
        check = ("not checked" if self.max_abs_diff is None else
                 f"{'onnxruntime' if self.format == 'onnx' else 'torch.export.load'} on "
                 f"{', '.join('x'.join(map(str, s)) for s in self.checked_shapes)}: max |logit diff| vs eager "
                 f"{self.max_abs_diff:.1e} {'<=' if self.ok else '>'} {self.atol:g}")
        notes = "".join(f"; {n}" for n in self.notes)
        return (f"wrote {self.path} ({self.format}, {size:.1f} MB, {self.seconds:.0f} s): batch {b}, H x W {hw}; "
                f"{check}{notes}")


def _first_line(e: BaseException) -> str:
    """The innermost cause's type and first line (torch's exporters wrap the real reason in advice)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip()
    if "## Exception summary" in text:  # torch.onnx's report: the reason follows this heading
        text = text.split("## Exception summary", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:400]


def size_multiple(model: nn.Module) -> int:
    """The stride every side of an input must be a multiple of: the largest reduction in ``feature_info`` (32 for
    MaxViT and Hiera, the patch size for EVA-02), else ``config.patch_size``, else 32."""
    info = getattr(model, "feature_info", None)
    if info:
        try:
            return int(max(f["reduction"] for f in info))
        except (TypeError, KeyError):
            pass
    return int(getattr(getattr(model, "config", None), "patch_size", None) or 32)


def _takes_other_sizes(model: nn.Module, chans: int, hw: tuple[int, int], m: int) -> bool:
    """Whether the eager model runs on a different, non-square size (one more stride high, two wider)."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, chans, hw[0] + m, hw[1] + 2 * m))
        return True
    except Exception:  # noqa: BLE001 - a fixed-size model refuses: export H x W as static
        return False


@contextmanager
def _quiet_onnx() -> Iterator[None]:
    """Silence the ONNX exporter's registration warnings (optional torchvision ops it cannot find)."""
    lg = logging.getLogger("torch.onnx._internal.exporter._registration")
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


def export_model(
    model: nn.Module,
    fmt: str,
    path: str | os.PathLike,
    *,
    img_size: int | tuple[int, int] | None = None,
    dynamic_batch: bool = True,
    dynamic_hw: bool | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    overwrite: bool = False,
    hw_time_limit: float | None = 120.0,
) -> ExportReport:
    """Export ``model`` (in eval mode, on the CPU, fp32) to ``path`` as ``fmt`` ('onnx' or 'pt2').

    img_size: the example input's size (default: the model's). dynamic_hw: None exports H x W as dynamic when the
    eager model takes another size (each side a multiple of :func:`size_multiple`), True insists, False keeps them
    static (None also falls back to static H x W when ``torch.export`` cannot trace them symbolically; the report
    notes why). hw_time_limit: seconds allowed for the dynamic H x W attempt (``torch.export``'s symbolic shape
    reasoning can take very long on some models). verify: load the file back and compare its logits with eager on
    batch sizes 1 and 3 (and another H x W when dynamic). Raises :class:`ExportError` when the export fails or the file's logits differ from eager by more
    than ``atol``. An existing ``path`` is an error unless ``overwrite``.
    """
    path = _check_target(model, fmt, Path(path), overwrite)
    t0 = time.perf_counter()
    model = model.eval().cpu().float()
    hw = model_img_size(model) if img_size is None else img_size_hw(img_size)
    chans = in_chans(model)
    m = size_multiple(model)
    auto_hw = dynamic_hw is None
    dynamic_hw = _dynamic_hw(model, dynamic_hw, chans, hw, m)
    x = torch.randn(EXPORT_BATCH, chans, *hw)
    report = ExportReport(path, fmt, tuple(x.shape), dynamic_batch, dynamic_hw, hw_multiple=m if dynamic_hw else None,
                          atol=atol)

    try:
        ep = _torch_export(model, x, dynamic_batch, dynamic_hw, m, hw_time_limit if dynamic_hw else None)
    except ExportError as e:
        if not (dynamic_hw and auto_hw):
            raise
        # the eager model takes other sizes but torch.export cannot trace them symbolically: keep H x W static
        report.notes.append(f"H x W static: {e}")
        report.dynamic_hw, report.hw_multiple = False, None
        ep = _torch_export(model, x, dynamic_batch, False, m)
    if dynamic_batch:
        report.batch_range = _batch_range(ep)
    _save(ep, model, fmt, path)

    if verify:
        shapes = [(b, chans, *hw) for b in (VERIFY_BATCHES if dynamic_batch else (EXPORT_BATCH,))]
        if report.dynamic_hw:
            shapes.append((VERIFY_BATCHES[0], chans, hw[0] + m, hw[1] + 2 * m))
        report.checked_shapes = shapes
        report.max_abs_diff = _verify(model, path, fmt, shapes)
    report.seconds = time.perf_counter() - t0
    if verify and not report.ok:
        raise ExportError(f"the exported file does not match eager: {report.summary()}", report)
    log.info("%s", report.summary())
    return report


def _dynamic_hw(model: nn.Module, dynamic_hw: bool | None, chans: int, hw: tuple[int, int], m: int) -> bool:
    """Whether to export H x W as dynamic: as asked (an error where the model cannot), or for None whether the
    model traces symbolically and its eager form takes another size."""
    symbolic_ok = getattr(getattr(model, "model", model), "export_dynamic_hw", True)
    if dynamic_hw and not symbolic_ok:
        raise ValueError(f"{type(getattr(model, 'model', model)).__name__} exports with a static H x W "
                         "(a dynamic batch is fine): export one file per input size")
    if dynamic_hw is None:
        return bool(symbolic_ok and _takes_other_sizes(model, chans, hw, m))
    if dynamic_hw and (hw[0] % m or hw[1] % m):
        raise ValueError(f"dynamic H x W needs img_size a multiple of {m}, got {hw[0]}x{hw[1]}")
    return dynamic_hw


def _check_target(model: nn.Module, fmt: str, path: Path, overwrite: bool) -> Path:
    """One-line errors for a format, model or output path export cannot take; ``path`` back."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if getattr(getattr(model, "config", None), "num_frames", 0):
        raise ValueError("export takes image models; video models (num_frames > 0) are not supported yet")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory not found: {path.parent}")
    if fmt == "onnx":
        require_onnx()
    return path


def _save(ep: Any, model: nn.Module, fmt: str, path: Path) -> None:
    """Write the exported program as ``fmt``; a failure removes the partial file and raises :class:`ExportError`."""
    try:
        if fmt == "pt2":
            torch.export.save(ep, str(path))
        else:
            with _quiet_onnx():
                program = torch.onnx.export(ep, dynamo=True, verbose=False)
                program.save(str(path), external_data=_param_bytes(model) > 1.5 * 2**30)  # ONNX's protobuf: < 2 GB
    except Exception as e:  # noqa: BLE001
        path.unlink(missing_ok=True)
        step = "saving the exported program" if fmt == "pt2" else "torch.onnx.export"
        raise ExportError(f"{step} failed: {_first_line(e)}") from e


def require_onnx() -> None:
    missing = []
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'bettervit[export]'")


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


class _TimeUp(Exception):
    pass


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_TimeUp` in the block after ``seconds`` (SIGALRM: main thread on POSIX only, else no limit)."""
    import signal
    import threading

    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _TimeUp

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _torch_export(model: nn.Module, x: Tensor, dynamic_batch: bool, dynamic_hw: bool, m: int,
                  time_limit: float | None = None):
    from torch.export import Dim

    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = Dim.DYNAMIC
    if dynamic_hw:
        limit = max(64, 4 * max(x.shape[-2:]) // m)  # up to 4x the example size, at least 64 strides per side
        dims[2] = m * Dim("h_strides", min=1, max=limit)
        dims[3] = m * Dim("w_strides", min=1, max=limit)
    name = _input_name(model)
    try:
        with _time_limit(time_limit):
            return torch.export.export(model, (x,), dynamic_shapes={name: dims} if dims else None)
    except _TimeUp:
        raise ExportError(f"torch.export did not finish in {time_limit:g} s (symbolic H x W)") from None
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"torch.export failed: {_first_line(e)}") from e


def _input_name(model: nn.Module) -> str:
    import inspect

    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[0].name if params else "x"


def _batch_range(ep) -> tuple[int, int | None] | None:
    """The range torch.export allows for the input's batch dimension (None when it is a constant)."""
    spec = next((s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"), None)
    if spec is None:
        return None
    node = next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == spec.arg.name), None)
    val = node.meta.get("val") if node is not None else None
    if val is None or not isinstance(val.shape[0], torch.SymInt):
        return None
    sym = val.shape[0].node.expr
    r = ep.range_constraints.get(sym)
    if r is None:
        return None
    try:
        hi: int | None = int(r.upper)
    except (TypeError, ValueError, OverflowError, AttributeError):  # sympy's (int) infinity: unbounded
        hi = None
    return int(r.lower), hi if hi is None or hi < 2**31 else None


def _verify(model: nn.Module, path: Path, fmt: str, shapes: list[tuple[int, ...]]) -> float:
    """Largest |logit difference| between the exported file and eager over inputs of ``shapes``."""
    gen = torch.Generator().manual_seed(0)
    if fmt == "pt2":
        loaded = torch.export.load(str(path)).module()
        run = lambda x: loaded(x)  # noqa: E731
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run = lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])  # noqa: E731
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = model(x)
            try:
                out = run(x)
            except Exception as e:  # noqa: BLE001
                raise ExportError(f"the exported file fails on input {'x'.join(map(str, shape))}: "
                                  f"{_first_line(e)}") from e
        if out.shape != ref.shape:
            raise ExportError(f"the exported file gives shape {tuple(out.shape)} on input "
                              f"{'x'.join(map(str, shape))}, eager {tuple(ref.shape)}")
        worst = max(worst, float((out.float() - ref.float()).abs().max()))
    return worst
