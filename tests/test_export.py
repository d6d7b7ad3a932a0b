"""Export: torch.export (.pt2) and ONNX (torch.onnx.export(dynamo=True)) of the smallest variant of each family,
with a dynamic batch (and H x W where the eager model takes other sizes), checked against eager in
torch.export.load / onnxruntime within 1e-4; the `bettervit export` command."""
from __future__ import annotations

import pytest
import torch

from bettervit import create_model
from bettervit.cli import main
from bettervit.export import ExportError, export_model

pytest.importorskip("onnxruntime")  # the `export` extra (CI installs it)

SMALLEST = {"maxvit_nano": 64, "hiera_nano": 64, "eva02_tiny_patch14_224": 56}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, img_size=SMALLEST[name]).eval()


@pytest.mark.parametrize("name", list(SMALLEST))
@pytest.mark.slow
def test_onnx_export_matches_eager_with_a_dynamic_batch(name, tmp_path):
    """ONNX goes through torch.export, so this covers both; the .pt2 writer is covered by the command's test."""
    path = tmp_path / f"{name}.onnx"
    report = export_model(_model(name), "onnx", path, dynamic_hw=False)
    assert path.is_file() and report.ok and report.max_abs_diff <= 1e-4
    size = SMALLEST[name]
    assert report.checked_shapes == [(1, 3, size, size), (3, 3, size, size)]  # batch sizes other than the export's 2
    assert report.dynamic_batch and report.batch_range is not None
    lo, hi = report.batch_range
    assert lo <= 2 and hi is None, f"batch exported as {lo}..{hi}, not unbounded"


@pytest.mark.slow
def test_export_has_a_dynamic_hw_where_the_graph_allows(tmp_path):
    name = "eva02_tiny_patch14_224"
    model, size, m = _model(name), SMALLEST[name], 14
    # dynamic_hw=True: no fallback to a static H x W; a symbolic trace that does not finish in a minute fails
    report = export_model(model, "onnx", tmp_path / "m.onnx", dynamic_hw=True, hw_time_limit=60)
    assert report.dynamic_hw and report.hw_multiple == m
    assert report.checked_shapes[-1] == (1, 3, size + m, size + 2 * m) and report.ok


@pytest.mark.parametrize("name", ["maxvit_nano", "hiera_nano"])
@pytest.mark.slow
def test_static_hw_models_say_so(name, tmp_path):
    model = _model(name)
    assert not model.export_dynamic_hw
    with pytest.raises(ValueError, match="static H x W"):
        export_model(model, "pt2", tmp_path / "m.pt2", dynamic_hw=True)
    report = export_model(model, "pt2", tmp_path / "m.pt2")  # the default: static H x W, dynamic batch, at once
    assert not report.dynamic_hw and report.dynamic_batch and report.ok


def test_export_refuses_to_overwrite_and_bad_formats(tmp_path):
    model = _model("hiera_nano")
    path = tmp_path / "x.onnx"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        export_model(model, "onnx", path)
    assert path.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="expected one of onnx, pt2, got 'tflite'"):
        export_model(model, "tflite", tmp_path / "y")
    with pytest.raises(FileNotFoundError, match="output directory not found"):
        export_model(model, "pt2", tmp_path / "no" / "y.pt2")


def _checkpoint(tmp_path, name: str = "hiera_nano"):
    from safetensors.torch import save_file

    model = _model(name)
    torch.nn.init.normal_(model.head.fc.weight, std=0.5)  # not the init a fresh model gets
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(f))
    return model, f


@pytest.mark.slow
def test_export_command_writes_a_checked_file_with_the_checkpoint_weights(tmp_path, capsys):
    model, ckpt = _checkpoint(tmp_path)
    out = tmp_path / "m.pt2"
    argv = ["export", "--model", "hiera_nano", "--checkpoint", str(ckpt), "--format", "pt2", "--output", str(out)]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out} (pt2,") and "max |logit diff| vs eager" in line
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(x), model(x), atol=1e-4, rtol=0)

    before = out.stat().st_mtime_ns
    assert main(argv) == 2  # exists: refused, one line, untouched
    err = capsys.readouterr().err.strip()
    assert err == f"bettervit export: error: {out} exists; pass --overwrite to replace it"
    assert out.stat().st_mtime_ns == before
    assert main(argv + ["--overwrite", "--static-hw", "--no-verify"]) == 0
    assert "not checked" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["--model", "hiera_nanoo", "--format", "onnx", "--output", "{tmp}/m.onnx"], "unknown model 'hiera_nanoo'"),
    (["--model", "hiera_nano", "--format", "tflite", "--output", "{tmp}/m"], "invalid choice: 'tflite'"),
    (["--model", "hiera_nano", "--format", "onnx", "--output", "{tmp}/no/m.onnx"], "output directory not found"),
    (["--model", "hiera_nano", "--format", "onnx", "--output", "{tmp}/m.onnx"], "has no default released weights"),
    (["--model", "hiera_nano", "--format", "onnx", "--output", "{tmp}/m.onnx", "--checkpoint", "{tmp}/none.pt"],
     "checkpoint not found"),
])
def test_export_command_bad_input_is_one_line(argv, expected, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_export_command_failure_is_one_line(tmp_path, capsys, monkeypatch):
    import bettervit.export as ex

    def fail(*a, **k):
        raise ExportError("torch.export failed: UserError: something\nwith a second line")

    monkeypatch.setattr(ex, "export_model", fail)
    _, ckpt = _checkpoint(tmp_path)
    assert main(["export", "--model", "hiera_nano", "--checkpoint", str(ckpt), "--format", "pt2", "--output",
                 str(tmp_path / "m.pt2")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "bettervit export: failed: torch.export failed: UserError: something with a second line"
