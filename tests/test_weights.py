"""Weight loading: local formats, the hub cache (offline), safe unpickling, clear errors."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

import bettervit
from bettervit import weights

NAME = "maxvit_nano"


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    return bettervit.create_model(NAME).eval()


def _same(a, b):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
def test_local_formats(tmp_path, source, suffix):
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)  # DDP-style wrapper
    _same(bettervit.create_model(NAME, pretrained=str(path)).eval(), source)


def _fake_hub_cache(root, repo_id, sd):
    """The on-disk layout huggingface_hub uses: models--org--name/{refs/main, snapshots/<rev>/file}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    save_file(sd, str(snap / "model.safetensors"))


@pytest.mark.slow
def test_hub_id_and_pretrained_true_from_offline_cache(tmp_path, monkeypatch, source):
    sd = {k: v.contiguous() for k, v in source.state_dict().items()}
    _fake_hub_cache(tmp_path, "someone/maxvit_nano.test", sd)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    _same(bettervit.create_model(NAME, pretrained="someone/maxvit_nano.test").eval(), source)
    _same(bettervit.create_model(NAME, pretrained="hf-hub:someone/maxvit_nano.test").eval(), source)
    # pretrained=True resolves the variant's recorded hub id through the same cache
    entry = bettervit.factory.get_entry("maxvit_tiny_tf_224")
    assert entry.weights == "timm/maxvit_tiny_tf_224.in1k"
    with pytest.raises(ValueError, match="could not fetch weights for hub id 'timm/maxvit_tiny_tf_224.in1k'"):
        bettervit.create_model("maxvit_tiny_tf_224", pretrained=True)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        bettervit.create_model(NAME, pretrained=str(path))
    assert "pwned" not in capsys.readouterr().out


def test_bad_paths_and_ids(tmp_path):
    with pytest.raises(ValueError, match="checkpoint file not found"):
        weights.resolve(str(tmp_path / "nope.pth"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="expected a file ending in"):
        weights.resolve(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="hub id 'org/name'"):
        weights.resolve("justaname")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        bettervit.create_model(NAME, pretrained=str(tmp_path / "garbage.safetensors"))


def test_list_models_and_registry():
    names = bettervit.list_models()
    assert names == sorted(names)
    assert {f"maxvit_{s}_tf_{r}" for s in ("tiny", "small", "base", "large", "xlarge") for r in (224, 384, 512)} <= set(names)
    assert bettervit.list_models("maxvit_tiny*") == ["maxvit_tiny_tf_224", "maxvit_tiny_tf_384", "maxvit_tiny_tf_512"]
