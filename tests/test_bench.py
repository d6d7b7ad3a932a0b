"""bettervit.bench and the `bench` / `models` commands: what is measured and reported (not how fast: speed is
measured by the benchmark scripts, never by tests)."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

from bettervit import bench
from bettervit.cli import main


def test_gpu_peak_table_matches_device_names():
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989
    assert bench.gpu_peak_tflops("NVIDIA H100 PCIe", "bf16") == 756
    assert bench.gpu_peak_tflops("NVIDIA H100 NVL", "fp16") == 835
    assert bench.gpu_peak_tflops("NVIDIA H200", "bf16") == 989
    assert bench.gpu_peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312
    assert bench.gpu_peak_tflops("NVIDIA L4", "bf16") == 121
    assert bench.gpu_peak_tflops("NVIDIA L40S", "bf16") == 362
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "none") == 67  # fp32: no tensor cores
    assert bench.gpu_peak_tflops("NVIDIA A10G", "bf16") is None  # not the A10: unknown, not guessed
    assert bench.gpu_peak_tflops("Some Future GPU", "bf16") is None


def test_meta_flops_of_a_training_step_are_about_three_forwards():
    fwd = bench.model_flops("hiera_nano", 2, 64, train=False)
    step = bench.model_flops("hiera_nano", 2, 64, train=True)
    # the counter sees the real backward: two matmuls per forward matmul (input and weight gradients), except the
    # patch embedding's input gradient, which autograd skips (the image needs none)
    assert 2.6 * fwd < step <= 3 * fwd
    assert bench.model_flops("hiera_nano", 4, 64, train=False) == 2 * fwd  # linear in the batch


def test_meta_flops_equal_the_count_on_real_tensors():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bettervit import create_model

    m = create_model("eva02_tiny_patch14_224", img_size=56).eval()
    # the plain math: grad enabled (no CPU inference kernel hides from the counter) and SDPA's math backend (the
    # counter has no formula for the CPU flash-attention op; on meta SDPA is counted as its matmuls)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        real = bench.count_flops(lambda: m(torch.randn(2, 3, 56, 56)))
    assert bench.model_flops("eva02_tiny_patch14_224", 2, 56, train=False) == real


class _Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        raise RuntimeError("no kernel for this\nsecond line")


def test_compare_reports_a_failing_implementation_and_measures_the_rest():
    ok = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(2, 3, 2, 2)
    res = {r.name: r for r in bench.compare({"ok": ok, "boom": _Boom()}, x, train=True, warmup=1, repeats=2,
                                            flops=100)}
    assert res["ok"].ok and len(res["ok"].seconds) == 2 and res["ok"].img_per_s > 0
    assert res["ok"].flops == 100 and res["ok"].peak_mb is not None
    assert not res["boom"].ok and res["boom"].error == "RuntimeError: no kernel for this"
    assert ok[1].weight.grad is None  # gradients of the training steps are freed


def test_run_benchmark_reports_json(tmp_path):
    out = tmp_path / "b.json"
    report = bench.run_benchmark("hiera_nano", batch_size=2, repeats=2, warmup=1, impls=["plain", "compiled"],
                                 compile_backend="eager", use_timm=False, json_path=out, print_fn=lambda s: None)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    setup, rows = report["setup"], report["results"]
    assert setup["model"] == "hiera_nano" and setup["img_size"] == [64, 64] and setup["amp"] == "none"
    assert setup["peak_source"].startswith("measured") and setup["peak_tflops"] > 0
    assert [(r["mode"], r["name"]) for r in rows] == [("infer", "plain"), ("infer", "compiled"),
                                                      ("train", "plain"), ("train", "compiled")]
    for r in rows:
        assert r["error"] is None and r["img_per_s"] > 0 and len(r["seconds"]) == 2
        assert r["flops"] == bench.model_flops("hiera_nano", 2, 64, train=r["mode"] == "train")
        assert r["mfu"] == pytest.approx(r["flops"] / r["median_s"] / (setup["peak_tflops"] * 1e12))


def test_default_impls():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bench.default_impls(cpu, False, True) == ["plain", "optimized", "timm", "timm-compiled"]
    assert bench.default_impls(cpu, True, False) == ["plain", "optimized", "compiled"]
    assert bench.default_impls(cuda, False, True) == ["plain", "timm"]
    assert bench.default_impls(cuda, True, True) == ["compiled", "timm-compiled"]


def test_bench_command_passes_options(monkeypatch):
    calls = []
    fake = types.ModuleType("bettervit.bench")
    fake.IMPLS = bench.IMPLS
    fake.run_benchmark = lambda model, **kw: calls.append((model, kw))
    monkeypatch.setitem(sys.modules, "bettervit.bench", fake)
    assert main(["bench", "--model", "hiera_nano", "--batch-size", "2", "--img-size", "64", "--repeats", "3",
                 "--no-train", "--amp", "bf16", "--impls", "plain,timm", "--peak-tflops", "1.5"]) == 0
    (model, kw), = calls
    assert model == "hiera_nano" and kw["batch_size"] == 2 and kw["img_size"] == 64 and kw["repeats"] == 3
    assert kw["train"] is False and kw["amp"] == "bf16" and kw["impls"] == ["plain", "timm"]
    assert kw["peak_tflops"] == 1.5 and kw["device"] == torch.device("cpu") and kw["compile"] is False


@pytest.mark.parametrize("argv, expected", [
    (["--impls", "plain,fast"], "expected a comma list of plain, optimized, compiled, timm, timm-compiled"),
    (["--device", "tpu"], "invalid choice"),
    (["--amp", "fp8"], "invalid choice"),
    (["--peak-tflops", "0"], "expected a number in (0.0, inf]"),
])
def test_bench_bad_options_are_one_line(argv, expected, capsys):
    assert main(["bench", "--model", "hiera_nano", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_bench_cuda_without_a_gpu_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "--model", "hiera_nano", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bettervit bench: error: --device cuda requested but no CUDA device is available"


def _bench_gpu():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_bench_gpu_smoke_runs_every_part(tmp_path):
    """benchmarks/bench_gpu.py --smoke on the CPU: every part runs and lands in results.json and the profile file
    (the compile backend is "eager" here, to keep the test short: Dynamo traces, nothing is code-generated)."""
    mod = _bench_gpu()
    out = tmp_path / "out"
    assert mod.main(["--smoke", "--out", str(out), "--models", "hiera_nano", "--warmup", "1", "--repeats", "1",
                     "--compile-backend", "eager", "--no-timm"]) == 0
    d = json.loads((out / "results.json").read_text())
    assert d["setup"]["smoke"] and d["errors"] == [] and d["skipped"] == []
    for section in ("eager", "compiled"):
        for mode in ("infer", "train"):
            r = d[section]["hiera_nano"][mode]["bettervit"]
            assert r["error"] is None and r["img_per_s"] > 0 and r["peak_mb"] is not None
            assert r["flops"] == bench.model_flops("hiera_nano", 2, 64, train=mode == "train")
    mem = d["memory"]["hiera_nano"]["bettervit"]
    assert mem["train_peak_mb"] > 0 and mem["params_mb"] == pytest.approx(4 * 1.433416e6 / 2**20, rel=1e-3)
    check = d["check"]["hiera_nano"]
    assert check["ok"] and check["params_with_grad"] > 10 and check["grads_rel_err"] < 1e-6
    table = (out / "profile_hiera_nano.txt").read_text()
    for impl in ("bettervit eager", "bettervit compiled"):
        for mode in ("infer", "train"):
            assert f"=== {impl} {mode} ===" in table
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "profile_hiera_nano.txt", "results.json"]


def test_bench_gpu_records_failures_and_the_budget(tmp_path):
    mod = _bench_gpu()
    out = tmp_path / "out"
    # an unknown compile backend: the failure is recorded and the run goes on to the next part
    assert mod.main(["--smoke", "--out", str(out), "--models", "hiera_nano", "--large", "--parts",
                     "compiled,check,profile", "--warmup", "1", "--repeats", "1", "--compile-backend",
                     "no_such_backend", "--no-timm"]) == 0
    d = json.loads((out / "results.json").read_text())
    assert [e["what"] for e in d["errors"]] == ["compile hiera_nano"] and "no_such_backend" in d["errors"][0]["error"]
    assert d["compiled"] == {} and d["check"] == {} and d["profile"]["hiera_nano"] == ["bettervit eager infer",
                                                                                     "bettervit eager train"]
    assert mod.main(["--smoke", "--out", str(out), "--models", "hiera_nano", "--large", "--parts", "eager",
                     "--budget", "0", "--no-timm"]) == 0
    d = json.loads((out / "results.json").read_text())
    assert d["eager"] == {} and [s.split(" (")[0] for s in d["skipped"]] == ["eager hiera_nano infer",
                                                                         "eager hiera_nano train"]


# --- `bettervit models`: parameters and GMACs from a generated table --------------------------------------------
def test_count_model_counts_full_size_on_meta():
    c = bench.count_model("hiera_tiny_224")
    assert c["img_size"] == 224 and c["params"] == 27_910_216
    assert c["flops"] / 2e9 == pytest.approx(4.90, rel=0.01)


def test_counts_table_has_every_registered_model():
    from bettervit._counts import COUNTS
    from bettervit.factory import list_models

    missing, stale = sorted(set(list_models()) - set(COUNTS)), sorted(set(COUNTS) - set(list_models()))
    assert not missing and not stale, f"run scripts/model_counts.py (missing {missing}, not registered {stale})"


@pytest.mark.parametrize("name", ["hiera_nano", "maxvit_nano", "eva02_tiny_patch14_224", "hiera_tiny_224",
                                  "mae_hiera_nano"])
def test_counts_table_equals_a_fresh_count(name):
    from bettervit._counts import COUNTS

    c = bench.count_model(name)
    assert COUNTS[name] == (c["img_size"], c["params"], c["flops"]), "run scripts/model_counts.py"


def test_models_command_reads_the_table_and_counts_mae(monkeypatch, capsys):
    def no_building(name):
        raise AssertionError(f"{name} was built")

    monkeypatch.setattr(bench, "count_model", no_building)
    assert main(["models"]) == 0
    rows = [r.split() for r in capsys.readouterr().out.splitlines()[2:]]
    by_name = {r[0]: r for r in rows}
    assert all(r[3] != "?" and r[4] != "?" for r in rows)
    assert float(by_name["mae_hiera_tiny_224"][4]) > float(by_name["hiera_tiny_224"][4]) * 0.5  # encoder + decoder
    assert by_name["hiera_tiny_224"][3:5] == ["27.91", "4.90"]
