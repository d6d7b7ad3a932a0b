"""The command line: models table, eval / predict on a trained run, pretraining, bad input (bench: test_bench.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bettervit.cli import main
from bettervit.train.checkpoint import load_checkpoint
from helpers import make_folder

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--no-progress", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One short digits run shared by the eval / predict / bad-input tests."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--model", "hiera_nano", "--img-size", "32", "--epochs", "2", "--lr", "2e-3",
                 "--output", str(out), *QUICK]) == 0
    return out


def _one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith(f"bettervit {command}: error:"), err
    return lines[0]


def test_models_table(capsys):
    assert main(["models", "hiera_n*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["model", "family", "img"]
    row = next(r for r in out if r.startswith("hiera_nano "))
    params, gmacs = float(row.split()[3]), float(row.split()[4])
    assert 0.5 < params < 5 and 0 < gmacs < 1


def test_eval_and_predict(digits_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", "--model", "hiera_nano", "--checkpoint", str(digits_run / "best.pt"), "--workers", "0"]) == 0
    line = capsys.readouterr().out.strip()
    top1 = float(line.split()[1].rstrip("%"))
    best = max(json.loads(r)["val_top1"] for r in (digits_run / "metrics.jsonl").read_text().splitlines())
    assert top1 == pytest.approx(best, abs=0.006) and "top-5" in line
    # on the CPU eval runs bettervit.optimize's model; the plain one gives the same figures
    assert main(["eval", "--model", "hiera_nano", "--checkpoint", str(digits_run / "best.pt"), "--workers", "0",
                 "--no-optimize"]) == 0
    assert capsys.readouterr().out.strip().split()[:4] == line.split()[:4]

    # a digit from the validation split, saved as an ordinary PNG
    from sklearn.datasets import load_digits

    d = load_digits()
    img = tmp_path / "digit.png"
    Image.fromarray((d.images[-1] / 16 * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR).save(img)
    assert main(["predict", "--model", "hiera_nano", "--checkpoint", str(digits_run / "best.pt"), "--topk", "3",
                 str(img)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == f"{img}:" and len(out) == 4
    probs = [float(r.split()[0].rstrip("%")) for r in out[1:]]
    names = [r.split()[1] for r in out[1:]]
    assert probs == sorted(probs, reverse=True) and all(n in [str(i) for i in range(10)] for n in names)


def test_train_init_from_run(digits_run, tmp_path):
    out = tmp_path / "ft"
    assert main(["train", "--model", "hiera_nano", "--img-size", "32", "--epochs", "1", "--init",
                 str(digits_run / "best.pt"), "--layer-decay", "0.8", "--output", str(out), *QUICK]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["val_top1"] > 50  # started from the trained weights, not from scratch


def test_pretrain_mae_loss_falls_and_init(tmp_path):
    data = make_folder(tmp_path / "data", n_per_class=8, size=64, junk=False)
    out = tmp_path / "mae"
    assert main(["pretrain", "--method", "mae", "--model", "mae_hiera_nano", "--data", str(data), "--epochs", "4",
                 "--batch-size", "8", "--lr", "3e-3", "--warmup-epochs", "0", "--output", str(out), *QUICK]) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and rows[-1]["train_loss"] < rows[0]["train_loss"]
    png = Image.open(out / "mae_epoch004.png")
    # 8 images enlarged to 128 px, 2 px gaps; rows masked | reconstruction | original (the MAE paper's figure)
    assert png.size == (8 * 128 + 7 * 2, 3 * 128 + 2 * 2)
    final = np.asarray(Image.open(out / "reconstructions.png").convert("L"), dtype=np.float64)
    rec, orig = final[130:258, :128], final[260:388, :128]  # first image: reconstruction and original
    assert np.abs(rec - orig).mean() < 40  # visible units pasted, masked ones predicted in the image's own range
    # the encoder initialises a classifier
    ft = tmp_path / "ft"
    assert main(["train", "--model", "hiera_nano", "--data", str(data), "--epochs", "1", "--batch-size", "8",
                 "--init", str(out / "last.pt"), "--output", str(ft), *QUICK]) == 0
    mae = load_checkpoint(out / "last.pt")["model"]
    import bettervit

    clf = bettervit.create_model("hiera_nano", pretrained=str(out / "last.pt"), num_classes=2)
    assert torch.equal(clf.state_dict()["blocks.0.attn.qkv.weight"], mae["blocks.0.attn.qkv.weight"])


VIDEO_QUICK = ["--model", "mae_hiera_nano_video", "--data", "moving-digits:16", "--num-frames", "4", "--batch-size",
               "8", "--warmup-epochs", "0", *QUICK]


def test_pretrain_video_mae_on_moving_digits(tmp_path):
    """The embedded video default: synthetic moving digits clips; the figure shows masked | reconstruction |
    original rows for two clips, one column per reconstructed frame (4 frames -> frames 0 and 2)."""
    out = tmp_path / "vmae"
    assert main(["pretrain", "--method", "mae", *VIDEO_QUICK, "--epochs", "1", "--output", str(out)]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["epoch"] == 1 and np.isfinite(row["train_loss"]) and row["train_loss"] > 0
    png = Image.open(out / "reconstructions.png")
    assert png.size == (2 * 128 + 2, 6 * 128 + 5 * 2)  # 64 px frames enlarged x2 (to >= 96 px), 2 px gaps
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["name"] == "moving-digits" and cfg["data"]["train_images"] == 16
    meta = load_checkpoint(out / "last.pt")["meta"]
    assert meta["preprocess"]["num_frames"] == 4


def test_pretrain_video_mae_on_a_clip_folder(tmp_path):
    """User clips: DIR/{train,val}/<class>/<clip>/ frame images; the encoder then initialises a video classifier."""
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            for k in range(4):
                d = tmp_path / "clips" / split / c / f"clip{k}"
                d.mkdir(parents=True)
                for f in range(6):
                    Image.fromarray(rng.randint(0, 255, (72, 80, 3), dtype=np.uint8)).save(d / f"{f:02d}.png")
    out = tmp_path / "vmae"
    argv = ["--data", str(tmp_path / "clips"), "--num-frames", "4", "--img-size", "64", "--epochs", "1",
            "--batch-size", "8", *QUICK]
    assert main(["pretrain", "--method", "mae", "--model", "mae_hiera_nano_video", "--output", str(out), *argv]) == 0
    assert (out / "reconstructions.png").is_file()
    assert main(["train", "--model", "hiera_nano_video", "--init", str(out / "last.pt"), "--output",
                 str(tmp_path / "ft"), *argv]) == 0
    row = json.loads((tmp_path / "ft" / "metrics.jsonl").read_text())
    assert np.isfinite(row["train_loss"]) and 0 <= row["val_top1"] <= 100


def test_pretrain_video_mae_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["pretrain", "--method", "mae", *VIDEO_QUICK, "--epochs", "2", "--output", str(a), "--stop-after",
                 "1"]) == 0
    assert main(["pretrain", "--method", "mae", *VIDEO_QUICK, "--epochs", "2", "--output", str(a), "--resume"]) == 0
    assert main(["pretrain", "--method", "mae", *VIDEO_QUICK, "--epochs", "2", "--output", str(b)]) == 0
    rows = [json.loads(r) for r in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    wa, wb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


def test_pretrain_mim_loss_falls(tmp_path):
    data = make_folder(tmp_path / "data", n_per_class=8, size=56, junk=False)
    out = tmp_path / "mim"
    assert main(["pretrain", "--method", "mim", "--model", "eva02_tiny_patch14_224", "--teacher",
                 "eva02_tiny_patch14_224", "--img-size", "56", "--data", str(data), "--epochs", "3", "--batch-size",
                 "8", "--lr", "2e-3", "--warmup-epochs", "0", "--output", str(out), *QUICK]) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    import bettervit

    clf = bettervit.create_model("eva02_tiny_patch14_224", pretrained=str(out / "last.pt"), num_classes=2,
                                 img_size=56)
    sd = load_checkpoint(out / "last.pt")["model"]
    k = next(k for k in clf.state_dict() if k.endswith("attn.qkv.weight") or k.endswith("attn.q_proj.weight"))
    assert torch.equal(clf.state_dict()[k], sd["encoder." + k])


# --- bad input: exit 2, one line on stderr, no traceback, nothing written ---------------------------------------
BAD = [
    (["train", "--model", "hiera_nanoo"], "unknown model"),
    (["eval", "--model", "nope", "--checkpoint", "x.pt"], "unknown model"),
    (["predict", "--model", "nope", "--checkpoint", "{ckpt}", "img.png"], "unknown model"),
    (["train", "--model", "hiera_nano", "--data", "/no/such/dir"], "not found"),
    (["train", "--model", "hiera_nano", "--data", "{empty}"], "train/"),
    (["train", "--model", "hiera_nano", "--epochs", "0"], "epochs"),
    (["train", "--model", "hiera_nano", "--lr", "-1"], "lr"),
    (["train", "--model", "hiera_nano", "--crop-scale", "big"], "crop-scale"),
    (["train", "--model", "hiera_nano", "--amp", "fp8"], "amp"),
    (["train", "--model", "hiera_nano", "--img-size", "48"], "multiple"),
    (["train", "--model", "hiera_nano", "--init", "{garbage}"], "cannot read checkpoint"),
    (["train", "--model", "hiera_nano", "--resume"], "cannot resume"),
    (["eval", "--model", "hiera_nano", "--checkpoint", "{garbage}"], "cannot read checkpoint"),
    (["eval", "--model", "hiera_nano", "--checkpoint", "/no/such.pt"], "not found"),
    (["predict", "--model", "hiera_nano", "--checkpoint", "{ckpt}", "/no/such.png"], "image not found"),
    (["predict", "--model", "hiera_nano", "--checkpoint", "{ckpt}", "{garbage}"], "cannot read image"),
    (["pretrain", "--method", "mae", "--model", "hiera_nano"], "MAE model"),
    (["pretrain", "--method", "mim", "--model", "eva02_tiny_patch14_224"], "teacher"),
    (["train", "--model", "hiera_nano", "--output", "{run}", "--resume", "--img-size", "64"], "cannot resume"),
    (["train", "--model", "maxvit_nano", "--output", "{run}", "--resume"], "cannot resume"),
    (["nonsense"], "invalid choice"),
    (["train", "--model", "hiera_nano", "--num-frames", "4"], "image model"),
    (["pretrain", "--method", "mae", "--model", "mae_hiera_nano_video", "--data", "moving-digits:x"], "moving-digits:N"),
    (["train", "--model", "hiera_nano_video", "--data", "{empty}"], "train/"),
    (["train", "--model", "hiera_nano", "--labels-per-class", "0"], "labels-per-class"),
    (["train", "--model", "hiera_nano", "--labels-per-class", "500"], "has only"),
    (["eval", "--model", "hiera_nano", "--checkpoint", "{ckpt}", "--knn", "0"], "knn"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input(argv, needle, digits_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    subs = {"{ckpt}": str(digits_run / "best.pt"), "{empty}": str(tmp_path / "empty"),
            "{garbage}": str(tmp_path / "garbage.pt"), "{run}": str(digits_run)}
    argv = [subs.get(a, a) for a in argv]
    before = {p: p.stat().st_mtime_ns for p in digits_run.iterdir()}
    capsys.readouterr()
    assert main(argv + (QUICK if argv[0] in ("train", "pretrain") else [])) == 2
    cap = capsys.readouterr()
    line = [ln for ln in cap.err.strip().splitlines() if ln.strip()]
    assert len(line) == 1 and "Traceback" not in cap.err, cap.err
    assert needle in line[0], line[0]
    assert not (tmp_path / "runs").exists()  # nothing written
    assert {p: p.stat().st_mtime_ns for p in digits_run.iterdir()} == before


def test_existing_run_dir_is_not_overwritten(digits_run, capsys):
    before = {p.name: p.read_bytes() for p in digits_run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--model", "hiera_nano", "--img-size", "32", "--output", str(digits_run), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "--resume" in _one_error_line(err, "train") and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in digits_run.iterdir() if p.is_file()} == before


def test_subprocess_error_is_one_line(tmp_path):
    """A real process: python -m bettervit with an unknown model -> exit 2, one stderr line, nothing written."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "bettervit", "train", "--model", "maxvit_tinyy"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    line = _one_error_line(r.stderr, "train")
    assert "maxvit_tiny" in line  # the closest names are suggested
    assert list(tmp_path.iterdir()) == []


def test_eval_rejects_other_classes(digits_run, tmp_path, capsys):
    data = make_folder(tmp_path / "data", n_per_class=2, size=32, junk=False)
    capsys.readouterr()
    assert main(["eval", "--model", "hiera_nano", "--checkpoint", str(digits_run / "best.pt"), "--data", str(data),
                 "--workers", "0"]) == 2
    assert "classes" in _one_error_line(capsys.readouterr().err, "eval")


def test_init_that_does_not_fit_is_bad_input(digits_run, tmp_path, capsys):
    capsys.readouterr()
    rc = main(["train", "--model", "maxvit_nano", "--img-size", "64", "--init", str(digits_run / "best.pt"),
               "--output", str(tmp_path / "x"), *QUICK])
    assert rc == 2
    assert "does not fit" in _one_error_line(capsys.readouterr().err, "train")
    assert not (tmp_path / "x").exists()


def test_few_labels_linear_probe_and_knn(digits_run, tmp_path, capsys):
    """--labels-per-class keeps a stratified subset; --linear-probe leaves the encoder as it was and saves a plain
    classifier whose eval top-1 equals the logged one; eval --knn prints k-NN and the pixel baselines."""
    out = tmp_path / "probe"
    capsys.readouterr()
    assert main(["train", "--model", "hiera_nano", "--img-size", "32", "--init", str(digits_run / "best.pt"),
                 "--labels-per-class", "3", "--linear-probe", "--epochs", "3", "--output", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "pixel baselines on the same 30 train images" in printed
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["train_images"] == 30 and cfg["data"]["val_images"] > 300
    assert cfg["config"]["batch_size"] == 8 and cfg["config"]["weight_decay"] == 0.0  # small-data / probe defaults
    enc, probe = load_checkpoint(digits_run / "best.pt")["model"], load_checkpoint(out / "last.pt")["model"]
    assert set(probe) == set(enc)  # a plain hiera_nano classifier
    assert all(torch.equal(enc[k], probe[k]) for k in enc if not k.startswith("head.fc."))  # encoder frozen
    assert not torch.equal(enc["head.fc.weight"], probe["head.fc.weight"])
    logged = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()][-1]["val_top1"]
    capsys.readouterr()
    assert main(["eval", "--model", "hiera_nano", "--checkpoint", str(out / "last.pt"), "--knn", "5",
                 "--labels-per-class", "3", "--workers", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert float(lines[0].split()[1].rstrip("%")) == pytest.approx(logged, abs=0.006)  # BN folded (printed to 0.01)
    assert lines[1].startswith("k-NN top-1") and "30 train images" in lines[1]
    assert lines[2].startswith("pixel baselines")
