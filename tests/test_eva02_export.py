"""EVA-02 outside eager PyTorch: ``bettervit.optimize`` (CPU inference pass) equals the plain model; the plain model
goes through torch.export (dynamic batch, height and width) and torch's ONNX exporter (onnxruntime agrees), and
through torch.compile(fullgraph=True) for inference and a training step."""
from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import bettervit
from bettervit.optimize import optimize

TOL = 1e-4


def _model(name: str = "eva02_tiny_patch14_224", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = bettervit.create_model(name, **dict(dict(depth=2, num_classes=0), **kw)).eval()
    with torch.no_grad():  # non-trivial biases and norms, so every fused term matters
        for n, p in m.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("name, kw, sizes", [
    ("eva02_tiny_patch14_224", {}, [(224, 224), (112, 168), (70, 42)]),
    ("eva02_base_patch14_224", dict(embed_dim=128, num_heads=2), [(224, 224), (126, 98)]),  # separate qkv, sub-LN
    ("eva02_tiny_patch14_224", dict(patch_size=16, class_token=False, window_size=3, global_blocks=(1,)),
     [(128, 160), (96, 96)]),  # ViTDet: windows with padding, one global block
])
def test_optimize_equals_plain(name, kw, sizes):
    plain = _model(name, **kw)
    fast = optimize(plain)
    assert type(fast.blocks[0]).__name__ == "FastBlock" and type(plain.blocks[0]).__name__ == "Block"
    assert not any(isinstance(m, torch.nn.Linear) for m in fast.blocks.modules())  # packed weights only
    sd, plain_sd = fast.state_dict(), plain.state_dict()
    assert sd.keys() == plain_sd.keys()  # written back with the plain model's keys
    assert all(torch.equal(sd[k], plain_sd[k]) for k in sd)
    with torch.inference_mode():
        for h, w in sizes:
            x = torch.randn(2, 3, h, w)
            torch.testing.assert_close(fast(x), plain(x), atol=TOL, rtol=0)
            got = fast.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
            for g, r in zip(got, plain.forward_intermediates(x, indices=[0, 1], intermediates_only=True)):
                torch.testing.assert_close(g, r, atol=TOL, rtol=0)


def test_optimized_model_refuses_training_input():
    fast = optimize(_model())
    with pytest.raises(ValueError, match="CPU float32 inference"):
        fast(torch.randn(1, 3, 28, 28, requires_grad=True))


@pytest.mark.slow
def test_torch_export_dynamic_batch_height_width():
    m = _model()
    b, gh, gw = Dim("batch", min=1, max=16), Dim("gh", min=2, max=32), Dim("gw", min=2, max=32)
    ep = torch.export.export(m, (torch.randn(2, 3, 112, 112),), dynamic_shapes=({0: b, 2: 14 * gh, 3: 14 * gw},))
    with torch.no_grad():
        for shape in [(3, 3, 224, 224), (1, 3, 112, 168), (2, 3, 42, 420)]:  # 224 = the stored grid, others resized
            x = torch.randn(*shape)
            torch.testing.assert_close(ep.module()(x), m(x), atol=TOL, rtol=0)


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = _model()  # headless: the pooled, fc_norm-ed features (order 1) are compared
    b, gh, gw = Dim("batch", min=1, max=16), Dim("gh", min=2, max=32), Dim("gw", min=2, max=32)
    program = torch.onnx.export(m, (torch.randn(2, 3, 112, 112),), dynamo=True,
                                dynamic_shapes=({0: b, 2: 14 * gh, 3: 14 * gw},))
    program.save(str(tmp_path / "eva02.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "eva02.onnx"))
    name = sess.get_inputs()[0].name
    with torch.no_grad():
        for shape in [(2, 3, 112, 112), (3, 3, 112, 168), (1, 3, 224, 224)]:
            x = torch.randn(*shape)
            (got,) = sess.run(None, {name: x.numpy()})
            want = m(x)
            assert got.shape == (shape[0], 192) and want.abs().max() > 0.1
            torch.testing.assert_close(torch.from_numpy(got), want, atol=TOL, rtol=0)


@pytest.mark.slow
def test_torch_compile_fullgraph_inference_and_training_step():
    """Inference and one SGD step of eva02_tiny (1 block, 56x70 px) compiled with fullgraph=True equal eager."""
    torch._dynamo.reset()
    eager = _model(num_classes=5, depth=1)
    compiled_model = _model(num_classes=5, depth=1)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x, y = torch.randn(2, 3, 56, 70), torch.tensor([1, 3])
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), atol=TOL, rtol=1e-4)
    for net, model in [(eager, eager), (compiled, compiled_model)]:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for (n, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=n)
