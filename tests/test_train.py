"""Training recipe and run directory: optimizer groups, schedule, checkpoints, learning, exact resume, NaN stop."""
from __future__ import annotations

import json
import math

import pytest
import torch

import bettervit
from bettervit.cli import main
from bettervit.train import checkpoint as ckpt
from bettervit.train.optim import build_optimizer, cosine_with_warmup, param_groups
from helpers import make_folder

FAST = ["--model", "hiera_nano", "--img-size", "32", "--no-progress", "--workers", "0", "--threads", "1"]


def test_param_groups_decay_and_layer_scale():
    m = bettervit.create_model("hiera_nano", num_classes=10, img_size=32)
    groups = param_groups(m, weight_decay=0.05, layer_decay=0.5)
    skip = m.no_weight_decay()
    ids, L = m.param_layer_ids(), m.num_layer_ids()
    seen = set()
    for g in groups:
        for n, p in zip(g["names"], g["params"]):
            seen.add(n)
            no_decay = p.ndim <= 1 or n in skip
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), n
            assert math.isclose(g["lr_scale"], 0.5 ** (L - 1 - ids[n])), n
    assert seen == {n for n, _ in m.named_parameters()}
    assert any(g["weight_decay"] == 0 for g in groups) and any(g["weight_decay"] > 0 for g in groups)
    assert any(n.startswith("pos_embed") or "pos_embed" in n for n in skip)
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert max(g["lr"] for g in opt.param_groups) == pytest.approx(1e-3)
    assert min(g["lr"] for g in opt.param_groups) == pytest.approx(1e-3 * 0.5 ** (L - 1))


def test_cosine_with_warmup():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=20, warmup_steps=5, min_lr_ratio=0.0)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[4] < lrs[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:])) and lrs[-1] < 0.05


def test_checkpoint_atomic_and_clean(tmp_path):
    sd = {"_orig_mod.module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}
    clean = ckpt.clean_state_dict(sd)
    assert set(clean) == {"a.weight", "b"}
    ckpt.atomic_save({"model": clean}, tmp_path / "x.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp file left behind
    assert torch.equal(ckpt.load_checkpoint(tmp_path / "x.pt")["model"]["a.weight"], torch.ones(2))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(tmp_path / "bad.pt")
    compiled = torch.nn.parallel.DataParallel(torch.nn.Linear(2, 2))
    assert isinstance(ckpt.unwrap_model(compiled), torch.nn.Linear)


def test_short_digits_run_learns(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", *FAST, "--epochs", "2", "--lr", "2e-3", "--output", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "img_per_s"):
        assert key in rows[0]
    assert rows[-1]["val_top1"] > 50 and rows[-1]["val_top1"] > rows[0]["val_top1"] - 5  # chance is 10%
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for f in ("config.yaml", "metrics.jsonl", "curves.png", "best.pt", "last.pt"):
        assert (out / f).is_file(), f
    c = ckpt.load_checkpoint(out / "best.pt")
    assert c["meta"]["class_names"] == [str(i) for i in range(10)]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in c["model"])
    assert str(out) in capsys.readouterr().out
    # the best checkpoint initialises a new run (--init goes through create_model(pretrained=...))
    m = bettervit.create_model("hiera_nano", pretrained=str(out / "best.pt"), num_classes=10, img_size=32)
    for k, v in m.state_dict().items():
        assert torch.equal(v, c["model"][k]), k


def _same_weights(a_path, b_path) -> None:
    a, b = ckpt.load_checkpoint(a_path), ckpt.load_checkpoint(b_path)
    assert a["meta"]["epoch"] == b["meta"]["epoch"]
    for part in ("model", "ema"):  # the evaluated (EMA) weights and the raw training weights
        sa = a["resume"]["model"] if part == "model" else a["resume"]["ema"]
        sb = b["resume"]["model"] if part == "model" else b["resume"]["ema"]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (part, k)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    """Stopped after epoch 1 (--stop-after), and killed with SIGKILL during a later epoch: both resumed runs end
    with exactly the weights (raw and EMA) and losses of the run never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    data = make_folder(tmp_path / "data", n_per_class=16, size=32, classes=("a", "b", "c"))
    common = [*FAST, "--data", str(data), "--epochs", "3", "--batch-size", "8", "--ema-decay", "0.9",
              "--mixup", "0.5", "--cutmix", "0.5", "--accum-steps", "2", "--warmup-epochs", "1"]
    resume = ["train", "--model", "hiera_nano", "--resume", "--no-progress", "--output"]
    assert main(["train", *common, "--output", str(tmp_path / "straight")]) == 0

    assert main(["train", *common, "--output", str(tmp_path / "cut"), "--stop-after", "1"]) == 0
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1
    assert main([*resume, str(tmp_path / "cut")]) == 0
    _same_weights(tmp_path / "straight" / "last.pt", tmp_path / "cut" / "last.pt")
    ra = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    rb = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["train_loss"] for x in ra] == [json.loads(x)["train_loss"] for x in rb]

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "bettervit", "train", *common, "--output", str(tmp_path / "kill")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "kill" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # right after epoch 1's checkpoint: epoch 2 is under way
    proc.wait()
    assert ckpt.load_checkpoint(tmp_path / "kill" / "last.pt")["meta"]["epoch"] < 3
    assert main([*resume, str(tmp_path / "kill")]) == 0
    _same_weights(tmp_path / "straight" / "last.pt", tmp_path / "kill" / "last.pt")
    assert [json.loads(x)["epoch"] for x in (tmp_path / "kill" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_nan_loss_stops_and_keeps_last_good(tmp_path, monkeypatch, capsys):
    from bettervit.train.tasks import classify

    data = make_folder(tmp_path / "data", n_per_class=4, size=32, junk=False)
    out = tmp_path / "run"
    args = ["train", *FAST, "--data", str(data), "--epochs", "3", "--batch-size", "4", "--output", str(out)]
    real = classify.soft_cross_entropy
    calls = {"n": 0}

    def flaky(logits, target):
        calls["n"] += 1
        loss = real(logits, target)
        return loss * float("nan") if calls["n"] > 2 else loss  # epoch 1 has 2 steps; epoch 2 diverges

    monkeypatch.setattr(classify, "soft_cross_entropy", flaky)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # earlier lines are the epoch log
    assert last.startswith("bettervit train: stopped:") and "nan" in last and "last.pt" in last
    good = ckpt.load_checkpoint(out / "last.pt")
    assert good["meta"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_recipe_options_run(tmp_path):
    """bf16 autocast, grad checkpointing, RandAugment + flip, layer decay, label smoothing together."""
    data = make_folder(tmp_path / "data", n_per_class=4, size=32, junk=False)
    out = tmp_path / "run"
    rc = main(["train", *FAST, "--data", str(data), "--epochs", "1", "--batch-size", "4", "--output", str(out),
               "--amp", "bf16", "--grad-checkpointing", "--layer-decay", "0.75", "--label-smoothing", "0.2",
               "--randaugment", "2,5", "--hflip", "0.5", "--drop-path", "0.1"])
    assert rc == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert math.isfinite(row["train_loss"]) and 0 <= row["val_top1"] <= 100


def test_linear_probe_folds_batchnorm_exactly():
    from bettervit.train.probe import LinearProbe

    enc = bettervit.create_model("hiera_nano", num_classes=4, img_size=32)
    probe = LinearProbe(enc, 4)
    probe.train()
    assert not probe.encoder.training and all(not q.requires_grad for q in probe.encoder.parameters())
    for _ in range(3):  # fill the running statistics
        probe(torch.randn(8, 3, 32, 32))
    with torch.no_grad():
        probe.fc.weight.normal_()
        probe.fc.bias.normal_()
    probe.eval()
    x = torch.randn(5, 3, 32, 32)
    plain = bettervit.create_model("hiera_nano", num_classes=4, img_size=32)
    plain.load_state_dict(probe.classifier_state_dict())
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), probe(x), atol=1e-5)


def test_knn_top1():
    from bettervit.train.probe import knn_top1

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 5
    ty = torch.arange(3).repeat_interleave(10)
    tf = centers[ty] + torch.randn(30, 16, generator=g)
    vy = torch.arange(3).repeat(4)
    vf = centers[vy] + torch.randn(12, 16, generator=g)
    assert knn_top1(tf, ty, vf, vy, k=5) == 100.0
    # k=1 is the cosine nearest neighbour
    nn1 = (torch.nn.functional.normalize(vf, dim=1) @ torch.nn.functional.normalize(tf, dim=1).T).argmax(1)
    flipped = ty.clone()
    flipped[nn1[0]] = (flipped[nn1[0]] + 1) % 3  # relabel the first query's neighbour: its vote must follow
    assert knn_top1(tf, flipped, vf[:1], vy[:1], k=1) == 0.0
    with pytest.raises(ValueError):
        knn_top1(tf, ty, vf, vy, k=0)


def test_resolve_defaults_follow_the_task_and_data_size():
    from bettervit.train.config import RunConfig
    from bettervit.train.config import DEFAULTS, resolve_defaults

    big = RunConfig(model="hiera_nano")
    resolve_defaults(big, 1437)
    assert (big.batch_size, big.epochs, big.layer_decay, big.weight_decay) == (64, 10, 1.0, 0.05)
    few = RunConfig(model="hiera_nano", init="x.pt", labels_per_class=10)
    resolve_defaults(few, 100)
    assert few.batch_size == 16 and few.epochs * (100 // 16) >= DEFAULTS["min_train_steps"]
    assert few.layer_decay == DEFAULTS["finetune_layer_decay"] and few.lr == DEFAULTS["finetune_lr"]
    probe = RunConfig(model="hiera_nano", init="x.pt", linear_probe=True)
    resolve_defaults(probe, 100)
    assert probe.weight_decay == 0.0 and probe.layer_decay == 1.0 and probe.lr == DEFAULTS["probe_lr"]
    mae = RunConfig(task="pretrain", method="mae", model="mae_hiera_nano")
    resolve_defaults(mae, 1437)
    assert mae.epochs == DEFAULTS["mae_epochs"] and mae.eval_every >= 1
    given = RunConfig(model="hiera_nano", epochs=3, batch_size=5, lr=0.5, layer_decay=0.9)
    resolve_defaults(given, 100)
    assert (given.epochs, given.batch_size, given.lr, given.layer_decay) == (3, 5, 0.5, 0.9)  # never overridden


def test_layer_decay_with_frozen_parameters_keeps_each_layer_scale():
    m = bettervit.create_model("hiera_nano", num_classes=10, img_size=32)
    ids, L = m.param_layer_ids(), m.num_layer_ids()
    frozen = {n for n, q in m.named_parameters() if n.startswith(("patch_embed.", "pos_embed", "blocks.0.", "blocks.1."))}
    for n, q in m.named_parameters():
        q.requires_grad_(n not in frozen)
    groups = param_groups(m, weight_decay=0.05, layer_decay=0.7)
    names = {n for g in groups for n in g["names"]}
    assert names == {n for n, _ in m.named_parameters()} - frozen  # frozen ones are not optimised
    for g in groups:
        for n in g["names"]:
            assert math.isclose(g["lr_scale"], 0.7 ** (L - 1 - ids[n])), n  # not shifted by the freezing


@pytest.mark.parametrize("sched", ["cosine", "linear", "step", "constant"])
def test_every_schedule_keeps_the_layer_decay_ratios(sched):
    from bettervit.train.optim import build_scheduler

    m = bettervit.create_model("hiera_nano", num_classes=10, img_size=32)
    m.blocks[0].requires_grad_(False)
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.05, layer_decay=0.6)
    s = build_scheduler(sched, opt, total_steps=30, warmup_steps=4, min_lr_ratio=0.01)
    seen = set()
    for _ in range(30):
        top = max(g["lr"] for g in opt.param_groups)
        seen.add(round(top, 12))
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(top * g["lr_scale"], rel=1e-9)
        opt.step()
        s.step()
    assert len(seen) > (1 if sched == "constant" else 3)  # warmup (and decay) really happened


def test_recipes_cite_sources_and_apply(tmp_path):
    import yaml

    from bettervit.train.config import RunConfig
    from bettervit.train.recipes import list_recipes, recipe_overrides

    recipes = list_recipes()
    assert {"hiera_mae_finetune", "eva02_mim_finetune", "maxvit_finetune"} <= set(recipes)
    for name, r in recipes.items():
        assert r["name"] == name and "et al." in r["source"] and r["published_batch"] > 0, name
        RunConfig(**{k: v for k, v in recipe_overrides(name).items()}).validate()
    out = tmp_path / "run"
    assert main(["train", *FAST, "--recipe", "hiera_mae_finetune", "--epochs", "1", "--batch-size", "16",
                 "--labels-per-class", "3", "--output", str(out)]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert cfg["layer_decay"] == 0.65 and cfg["epochs"] == 1 and cfg["randaugment"] == [2, 27]  # given options win
    assert cfg["lr"] == pytest.approx(2e-3 * 16 / 1024)  # the published rate scaled to this batch
    assert main(["train", *FAST, "--recipe", "nope", "--output", str(tmp_path / "x")]) == 2
    assert main(["train", "--recipe", "list"]) == 0  # no --model needed to list them


def test_pixel_baselines_use_the_digits_own_pixels_and_subset():
    from bettervit.data import build_data
    from bettervit.train.probe import digits_pixel_baselines, pixel_baselines

    a = digits_pixel_baselines(5, seed=3)
    assert a == pixel_baselines(build_data("digits", 8).with_labels_per_class(5, 3))  # the subset does not depend on size
    assert set(a) == {"pixel_logreg_top1", "pixel_1nn_top1"} and all(50 < v <= 100 for v in a.values())
    assert digits_pixel_baselines()["pixel_1nn_top1"] > a["pixel_1nn_top1"]  # all 1,438 labels beat 50


# --- the task registry and the config merge -------------------------------------------------------------------
def test_unknown_task_is_one_line_and_writes_nothing(tmp_path):
    from bettervit.train.config import RunConfig
    from bettervit.train.engine import run
    from bettervit.train.tasks import create_task, get_task, task_name

    assert [task_name(RunConfig(**kw)) for kw in ({}, {"linear_probe": True}, {"task": "pretrain", "method": "mae"},
                                                   {"task": "pretrain", "method": "mim"}, {"task": "detect"})] == \
        ["classify", "probe", "mae", "mim", "detect"]
    assert get_task("classify").best_metric == "val_top1" and get_task("mae").best_metric is None
    out = tmp_path / "run"
    for call in (lambda: run(RunConfig(task="nope", model="hiera_nano", output=str(out))),
                 lambda: create_task(RunConfig(task="pretrain", method="byol"))):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and "unknown task" in msg and "classify, detect, mae, mim, probe" in msg, msg
    assert not out.exists()


class _ToyData:
    """Opaque batches: lists of (n, 4) tensors of different n, as detection's lists of images of different sizes."""

    name, class_names, skipped = "toy", None, 0

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = {s: [torch.randn(2 + i % 3, 4, generator=g) + 1 for i in range(n)] for s, n in (("train", 12),
                                                                                                  ("val", 4))}

    def size(self, split):
        return len(self.x[split])

    def indices(self, split, epoch, seed, rank=0, world=1, shuffle=True, batch_size=1):
        n = self.size(split)
        if not shuffle:
            return list(range(n))[rank::world]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        return order[rank::world][: (n // world) // batch_size * batch_size]

    def batches(self, split, indices, batch_size, workers=0):
        for i in range(0, len(indices), batch_size):
            yield [self.x[split][j] for j in indices[i: i + batch_size]]

    def preprocess_info(self):
        return {"toy": True}


def _toy_task():
    from torch import nn

    from bettervit.train.tasks import Task

    class ToyTask(Task):
        """Shrink a linear map's outputs: the smallest task the loop runs (evaluation, best.pt, files, meta)."""

        name, best_metric, best_key, run_files = "toy", "val_score", "best_score", ("toy_*.txt",)

        def build_data(self, cfg, info):
            return _ToyData()

        def defaults(self, cfg, n_train):
            return {"epochs": 3, "lr": 0.05, "weight_decay": 0.0, "layer_decay": 1.0}

        def build_model(self, cfg, data):
            return nn.Linear(4, 2)

        def to_device(self, batch, device):
            return [t.to(device) for t in batch]

        def batch_len(self, batch):
            return len(batch)

        def loss(self, model, batch):
            return sum(model(t).pow(2).mean() for t in batch) / len(batch)

        @torch.no_grad()
        def evaluate(self, model, data, info, cfg, out_dir):
            score = -sum(model(t).pow(2).mean().item() for t in data.x["val"])
            if info.is_main:
                (out_dir / "toy_eval.txt").write_text(f"{score}\n")
            return {"val_score": score}

        def checkpoint_meta(self):
            return {"toy_meta": {"width": 4}}

    return ToyTask


def test_a_registered_task_runs_through_the_loop(tmp_path, monkeypatch):
    """A task is one class plus its registration: opaque batches, its metrics in metrics.jsonl, best.pt following
    its best_metric, its files in the run directory (removed by --overwrite), its checkpoint meta, exact resume."""
    from bettervit.train import tasks
    from bettervit.train.config import RunConfig
    from bettervit.train.engine import run

    monkeypatch.setitem(tasks.TASKS, "toy", _toy_task())
    cfg = lambda out, **kw: RunConfig(task="toy", model="toy", output=str(out), batch_size=4, progress=False,  # noqa: E731
                                      workers=0, warmup_epochs=0, **kw)
    a, b = tmp_path / "a", tmp_path / "b"
    run(cfg(a))
    rows = [json.loads(r) for r in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("val_score" in r and "best_score" in r for r in rows)
    assert rows[-1]["best_score"] == max(r["val_score"] for r in rows) and rows[-1]["val_score"] > rows[0]["val_score"]
    best, last = ckpt.load_checkpoint(a / "best.pt"), ckpt.load_checkpoint(a / "last.pt")
    assert best["meta"]["metrics"]["val_score"] == rows[-1]["best_score"]
    assert last["meta"]["toy_meta"] == {"width": 4} and last["meta"]["task"] == "toy"
    assert last["meta"]["preprocess"] == {"toy": True} and last["resume"]["best_score"] == rows[-1]["best_score"]
    assert (a / "toy_eval.txt").is_file()
    # exact resume: stopped after epoch 1, resumed, equals the run above
    run(cfg(b, stop_after=1))
    run(RunConfig.from_dict({**cfg(b).to_dict(), "epochs": 3}), resume=True)
    wa, wb = ckpt.load_checkpoint(a / "last.pt")["model"], ckpt.load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # --overwrite removes the task's files too
    (a / "toy_stale.txt").write_text("old")
    run(cfg(a, epochs=1), overwrite=True)
    assert not (a / "toy_stale.txt").exists() and (a / "toy_eval.txt").is_file()


def test_config_merge_order(tmp_path):
    """defaults < recipe < saved run (on resume) < options given; the recipe rate scales with the world size."""
    import yaml

    from bettervit.train.config import RunConfig, merge_config, resolve_defaults

    d = RunConfig()
    r = merge_config({"model": "hiera_nano", "recipe": "hiera_mae_finetune"})
    assert (r.layer_decay, r.epochs, r.recipe_lr, r.recipe_batch, r.seed) == (0.65, 100, 2e-3, 1024, d.seed)
    given = merge_config({"model": "hiera_nano", "recipe": "hiera_mae_finetune", "layer_decay": 0.9})
    assert given.layer_decay == 0.9 and given.epochs == 100
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = RunConfig(model="hiera_nano", output=str(run_dir), layer_decay=0.5, epochs=7, seed=3, stop_after=1)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"config": saved.to_dict()}))
    res = merge_config({"model": "hiera_nano", "output": str(run_dir), "epochs": 9,
                        "recipe": "hiera_mae_finetune"}, resume=True)
    assert (res.layer_decay, res.seed, res.epochs, res.stop_after, res.recipe_lr) == (0.5, 3, 9, None, None)
    with pytest.raises(ValueError, match="is a run of hiera_nano, not maxvit_nano"):
        merge_config({"model": "maxvit_nano", "output": str(run_dir)}, resume=True)
    with pytest.raises(ValueError, match="cannot resume"):
        merge_config({"model": "hiera_nano", "output": str(tmp_path / "none")}, resume=True)
    for world in (1, 4):
        c = RunConfig(model="hiera_nano", batch_size=64, recipe_lr=2e-3, recipe_batch=1024)
        resolve_defaults(c, 5000, world=world)
        assert c.lr == pytest.approx(2e-3 * 64 * world / 1024)


def test_pretraining_records_the_layer_decay_it_uses():
    """Pretraining trains without layer decay; a --layer-decay given anyway is replaced in the config (what
    config.yaml records is what the optimizer used)."""
    from bettervit.train.config import DEFAULTS, RunConfig
    from bettervit.train.tasks import create_task

    for method in ("mae", "mim"):
        cfg = RunConfig(task="pretrain", method=method, model="x", layer_decay=0.8)
        create_task(cfg).resolve_defaults(cfg, 1437)
        assert cfg.layer_decay == 1.0 and cfg.epochs == DEFAULTS[f"{method}_epochs"]
        assert cfg.lr == DEFAULTS[f"{method}_lr"] and cfg.weight_decay == DEFAULTS["weight_decay"]
