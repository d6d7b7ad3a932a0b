"""Data: the digits split, image folders (skipping unreadable files), rank sharding, device augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bettervit.data import build_data
from bettervit.data.augment import AugmentConfig, DeviceAugment
from helpers import make_folder


def test_digits_fixed_split_and_shapes():
    d = build_data("digits", 32)
    assert d.class_names == [str(i) for i in range(10)]
    assert d.size("train") + d.size("val") == 1797
    assert 350 <= d.size("val") <= 370
    x, y = d.splits["train"]
    assert x.shape == (d.size("train"), 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated into 3 channels
    assert set(y.tolist()) == set(range(10))
    d2 = build_data(None, 32)  # the default is the digits, split identically
    assert torch.equal(d2.splits["val"][1], d.splits["val"][1])


def test_image_folder_skips_unreadable(tmp_path):
    make_folder(tmp_path)
    d = build_data(str(tmp_path), 16)
    assert d.class_names == ["cat", "dog"]
    assert d.size("train") == 8 and d.size("val") == 8
    assert d.skipped == 2  # notes.txt + broken.png
    x, y = next(d.batches("train", list(range(8)), 8))
    assert x.shape == (8, 3, d.load_size, d.load_size) and x.dtype == torch.uint8
    x, _ = next(d.batches("val", list(range(8)), 8))
    assert x.shape == (8, 3, 16, 16)


@pytest.mark.parametrize("layout", ["missing", "no_val", "empty_classes", "no_images"])
def test_image_folder_bad_layouts(tmp_path, layout):
    root = tmp_path / "data"
    if layout != "missing":
        (root / "train").mkdir(parents=True)
    if layout in ("empty_classes", "no_images"):
        (root / "val").mkdir()
    if layout == "no_images":
        (root / "train" / "a").mkdir()
        (root / "val" / "a").mkdir()
    with pytest.raises(ValueError) as e:
        build_data(str(root), 16)
    assert "\n" not in str(e.value)


def test_rank_shards_are_disjoint_and_epoch_dependent():
    d = build_data("digits", 8)
    a = d.indices("train", 0, seed=0, rank=0, world=2, batch_size=16)
    b = d.indices("train", 0, seed=0, rank=1, world=2, batch_size=16)
    assert len(a) == len(b) and len(a) % 16 == 0 and not set(a) & set(b)
    assert a == d.indices("train", 0, seed=0, rank=0, world=2, batch_size=16)
    assert a != d.indices("train", 1, seed=0, rank=0, world=2, batch_size=16)
    va = d.indices("val", 0, 0, 0, 2, shuffle=False) + d.indices("val", 0, 0, 1, 2, shuffle=False)
    assert sorted(va) == list(range(d.size("val")))


def test_augment_digits_defaults_and_output():
    cfg = AugmentConfig.for_data("digits")
    assert cfg.hflip == 0 and cfg.randaugment is None  # a mirrored digit is not a digit
    aug = DeviceAugment(cfg, 16, (0.3,) * 3, (0.4,) * 3, 10)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    xa, t = aug.train_batch(x, torch.tensor([0, 1, 2, 3]))
    assert xa.shape == (4, 3, 16, 16) and xa.dtype == torch.float32
    assert torch.allclose(t.sum(-1), torch.ones(4)) and t.argmax(-1).tolist() == [0, 1, 2, 3]
    e = aug.eval_batch(x)
    assert torch.allclose(e, (x.float() / 255 - 0.3) / 0.4, atol=1e-6)


def test_folder_recipe_runs_randaugment_and_flip():
    aug = DeviceAugment(AugmentConfig.for_data("folder"), 16, (0.5,) * 3, (0.25,) * 3, 3)
    xa, t = aug.train_batch(torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8), torch.tensor([0, 1, 2, 0]))
    assert xa.shape == (4, 3, 16, 16) and torch.isfinite(xa).all()


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_match_mixed_pixels(kind):
    """The soft target's share of each class equals that class's share of the mixed image's pixels."""
    torch.manual_seed(3)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, randaugment=None,
                        mixup=1.0 if kind == "mixup" else 0.0, cutmix=1.0 if kind == "cutmix" else 0.0,
                        label_smoothing=0.0)
    aug = DeviceAugment(cfg, 16, (0.0,) * 3, (1.0,) * 3, 8)
    y = torch.arange(8)
    x = (y.float() * 30).view(8, 1, 1, 1).expand(8, 3, 16, 16).to(torch.uint8)  # image i is flat, value 30*i
    xa, t = aug.train_batch(x, y)
    expected = (t * (torch.arange(8).float() * 30 / 255)).sum(-1)  # pixel mean implied by the target
    assert torch.allclose(xa.mean((1, 2, 3)), expected, atol=2e-3)
    assert (t.max(-1).values < 1).any()  # something was actually mixed


def test_labels_per_class_is_stratified_seeded_and_nested(tmp_path):
    d = build_data("digits", 8)
    a, b, a2 = d.with_labels_per_class(5, seed=0), d.with_labels_per_class(5, seed=1), d.with_labels_per_class(5, 0)
    ya = a.labels("train")
    assert torch.equal(torch.bincount(ya, minlength=10), torch.full((10,), 5))
    assert torch.equal(a.splits["train"][0], a2.splits["train"][0])  # fixed by the seed
    assert not torch.equal(a.splits["train"][0], b.splits["train"][0])
    assert a.splits["val"] is d.splits["val"]  # val unchanged
    small, big = d.with_labels_per_class(2, 0).splits["train"][0], a.splits["train"][0]
    assert all((big == img).flatten(1).all(1).any() for img in small)  # 2 per class are among the 5
    with pytest.raises(ValueError, match="has only"):
        d.with_labels_per_class(1000)
    make_folder(tmp_path, n_per_class=4, junk=False)
    f = build_data(str(tmp_path), 16).with_labels_per_class(3, 0)
    assert f.size("train") == 6 and torch.equal(torch.bincount(f.labels("train")), torch.tensor([3, 3]))
    x, y = next(f.batches("train", list(range(6)), 6))
    assert x.shape[0] == 6 and torch.equal(y.sort().values, torch.tensor([0, 0, 0, 1, 1, 1]))


# --- video: moving digits and clip folders ---------------------------------------------------------------------
def test_moving_digits_clips_are_fixed_and_move():
    from bettervit.data.moving_digits import bounce

    d = build_data("moving-digits:12", 32, num_frames=6)
    assert d.num_frames == 6 and d.size("train") == 12 and d.size("val") == 8 and d.class_names == [str(i) for i in range(10)]
    x, y = next(d.batches("train", list(range(4)), 4))
    assert x.shape == (4, 3, 6, 32, 32) and x.dtype == torch.uint8 and y.shape == (4,)
    assert torch.equal(x[:, 0], x[:, 1])  # grey in 3 channels
    assert all(not torch.equal(x[i, 0, 0], x[i, 0, -1]) for i in range(4))  # the digits move
    again, y2 = next(build_data("moving-digits:12", 32, num_frames=6).batches("train", list(range(4)), 4))
    assert torch.equal(again, x) and torch.equal(y2, y)  # a pure function of (split, index)
    assert torch.equal(d.labels("train"), torch.tensor([lab for _, lab in d.splits["train"].samples]))
    assert [bounce(p, 10) for p in (3, 12, 25, -4)] == [3, 8, 5, 4]  # reflected at 0 and 10


def test_clip_folder_frames_and_gifs(tmp_path):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("run", "walk"):
            d = tmp_path / split / c
            (d / "clip0").mkdir(parents=True)
            for i in range(5):  # 5 frames of different brightness, named in order
                Image.fromarray(np.full((20, 24, 3), 40 * i, dtype=np.uint8)).save(d / "clip0" / f"{i:03d}.png")
            frames = [Image.fromarray(rng.randint(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(3)]
            frames[0].save(d / "clip1.gif", save_all=True, append_images=frames[1:])
            (d / "notes.txt").write_text("not a clip")
            (d / "empty").mkdir()
    data = build_data(str(tmp_path), 16, num_frames=3)
    assert data.class_names == ["run", "walk"] and data.size("train") == 4 and data.skipped == 8
    x, y = next(data.batches("val", [0, 1], 2))
    assert x.shape == (2, 3, 3, 16, 16) and y.tolist() == [0, 0]
    assert x[0, 0, :, 8, 8].tolist() == [0, 80, 160]  # frames 0, 2, 4: evenly spaced, first and last included
    with pytest.raises(ValueError, match="holds no clips"):
        (tmp_path / "x" / "train" / "a").mkdir(parents=True)
        (tmp_path / "x" / "val" / "a").mkdir(parents=True)
        build_data(str(tmp_path / "x"), 16, num_frames=3)
