"""MaxViT's plain model and its CPU pass: bettervit.optimize equals the plain model, the model file holds no
CPU-specific branches, and the plain model goes through torch.export and torch.compile(fullgraph=True)."""
from __future__ import annotations

import inspect
import re

import pytest
import torch

import bettervit
from bettervit import weights
from bettervit.models import maxvit
from bettervit.optimize import onednn, optimize
from golden_util import GOLDEN, read_fixture, reference_checkpoint

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN ops")


def nano(**kw) -> maxvit.MaxViT:
    """maxvit_nano with the golden fill (realistic weight scales and BatchNorm statistics)."""
    _, shapes, _ = read_fixture(GOLDEN / "maxvit" / "sizes" / "maxvit_nano.safetensors")
    model = bettervit.create_model("maxvit_nano", **kw)
    weights.load_into(model, reference_checkpoint(shapes), source="fill")
    return model.eval()


def test_model_file_has_no_cpu_specific_branches():
    src = inspect.getsource(maxvit)
    for word in ("onednn", "mkldnn", "_use_cache", "_VersionedCache", "is_compiling", "inference_mode",
                 "device.type", "_version"):
        assert word not in src, word
    assert not re.search(r"is_grad_enabled\(\)(?!:\n\s+x = checkpoint)", src), "grad mode switches only checkpointing"


@needs_onednn
@pytest.mark.parametrize("size", [(64, 64), (128, 64), (96, 160)])  # built size, tiled, padded
def test_optimized_equals_plain(size):
    model = nano()
    fast = optimize(model)
    assert isinstance(fast.stages[0].blocks[0].attn_block, torch.nn.Module) and fast is not model
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Linear)) for m in fast.stages.modules())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = model.forward_intermediates(x)
        out = fast.forward_intermediates(x)
    assert (out[0] - ref[0]).abs().max().item() <= 1e-4
    for a, b in zip(out[1], ref[1]):
        assert (a - b).abs().max().item() <= 1e-4
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max().item() <= 1e-4


@needs_onednn
def test_optimized_runs_a_large_batch_in_pieces_with_the_same_result(monkeypatch):
    """A block whose expanded map exceeds chunk_bytes runs the batch a few images at a time, uneven last piece too."""
    from bettervit.optimize.maxvit import FastMaxViTBlock

    model = nano()
    fast = optimize(model)
    x = torch.randn(5, 3, 64, 96)
    with torch.no_grad():
        whole = fast(x)
        block = fast.stages[0].blocks[0]
        h = fast.stem(x)
        one_image = h[0].numel() * 4 * block.conv.conv1_fused.weight.shape[0] // h.shape[1]  # expanded bytes / image
        monkeypatch.setattr(FastMaxViTBlock, "chunk_bytes", 2 * one_image)
        assert block.pieces(h) == 3  # 5 images, 2 per piece: 2 + 2 + 1
        pieces = fast(x)
        ref = model(x)
    assert (pieces - ref).abs().max().item() <= 1e-4
    assert (pieces - whole).abs().max().item() <= 1e-5


@needs_onednn
def test_optimized_keeps_one_copy_of_the_linear_weights():
    fast = optimize(nano())
    attn = fast.stages[0].blocks[0].attn_block.attn
    assert not any(n.endswith("qkv.weight") for n, _ in fast.named_parameters())
    assert "stages.0.blocks.0.attn_block.attn.qkv.weight" in fast.state_dict()  # written back out as the plain one
    assert attn.qkv.packed.is_mkldnn


def test_inference_attention_reaches_fused_sdpa_kernel():
    from torch.profiler import profile

    model = bettervit.create_model("maxvit_nano").eval()
    with torch.inference_mode(), profile() as prof:
        model(torch.randn(1, 3, 64, 64))
    names = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_attention_math" not in names


def test_torch_export_with_dynamic_batch():
    model = nano()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compile_fullgraph_train_step_and_inference():
    """Inductor, fullgraph: a training step (loss and every gradient) and eval inference match eager."""
    torch.manual_seed(0)
    model = nano().train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])

    def step(m):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = step(model)
    compiled = torch.compile(model, fullgraph=True)
    loss_c, grads_c = step(compiled)
    torch.testing.assert_close(loss_c, loss, atol=1e-4, rtol=1e-4)
    for n, g in grads.items():
        torch.testing.assert_close(grads_c[n], g, atol=1e-4, rtol=1e-3, msg=n)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


@needs_onednn
def test_optimized_features_only_model():
    feats = bettervit.create_model("maxvit_nano", features_only=True, out_indices=(1, 3)).eval()
    fast = optimize(feats)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        ref, out = feats(x), fast(x)
    assert [tuple(t.shape) for t in out] == [(2, 32, 16, 32), (2, 128, 4, 8)]
    for a, b in zip(out, ref):
        assert (a - b).abs().max().item() <= 1e-4


def test_torch_export_with_dynamic_hw_is_refused_in_one_line():
    """Whether a stage's map is padded depends on H x W, so an exported graph is for one size (export.py then falls
    back to a static H x W)."""
    model = bettervit.create_model("maxvit_nano").eval()
    h = torch.export.Dim("h", min=2, max=8)
    with pytest.raises(Exception, match="static H x W"):
        torch.export.export(model, (torch.randn(1, 3, 64, 64),), dynamic_shapes=({2: 32 * h},))
