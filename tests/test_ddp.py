"""Two CPU processes under torchrun (gloo): DDP ranks agree and only rank 0 writes; FSDP2 shards, resumes, agrees."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_folder

pytestmark = pytest.mark.slow  # torchrun: two processes per test

REPO = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bettervit",
           "train", "--model", "hiera_nano", "--img-size", "32", "--no-progress", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_two_processes_agree(tmp_path, capsys):
    r = torchrun(["--epochs", "1", "--batch-size", "32", "--output", "run"], tmp_path)
    assert r.returncode == 0, [ln for ln in r.stderr.splitlines() if "error" in ln.lower()][:5]
    assert "ranks agree" in r.stderr and "DISAGREE" not in r.stderr
    assert r.stdout.count("run directory: run") == 1  # rank 0 prints, rank 1 stays quiet
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["val_top1"] > 20  # one writer; it learned something in one epoch
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt", "config.yaml", "curves.png", "last.pt", "metrics.jsonl"]
    # the ranks' shards of the 359 val images (180 + 179, one padded) add up to a single-process evaluation
    from bettervit.cli import main

    assert main(["eval", "--model", "hiera_nano", "--checkpoint", str(tmp_path / "run" / "best.pt"),
                 "--workers", "0"]) == 0
    line = capsys.readouterr().out
    assert float(line.split()[1].rstrip("%")) == pytest.approx(rows[0]["val_top1"], abs=0.006)
    assert "(359 images" in line


@pytest.mark.filterwarnings("ignore")
def test_fsdp_two_processes_resume_and_agree(tmp_path):
    data = make_folder(tmp_path / "data", n_per_class=16, size=32, junk=False)  # small: this test is about FSDP
    r = torchrun(["--epochs", "2", "--dist", "fsdp", "--output", "run", "--stop-after", "1", "--data", str(data),
                  "--batch-size", "8", "--workers", "0"], tmp_path)
    assert r.returncode == 0, [ln for ln in r.stderr.splitlines() if "error" in ln.lower()][:5]
    r = torchrun(["--dist", "fsdp", "--output", "run", "--resume"], tmp_path)
    assert r.returncode == 0, [ln for ln in r.stderr.splitlines() if "error" in ln.lower()][:5]
    assert "ranks agree" in r.stderr
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in rows] == [1, 2]
