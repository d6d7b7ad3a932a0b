"""The plain Hiera model under torch.compile (fullgraph, training and inference), torch.export with a dynamic batch,
and torch's ONNX exporter checked in onnxruntime. Kept fast: hiera_nano, and a capturing AOT backend instead of
Inductor's C++ code generation (which takes minutes on a small CI machine)."""
from __future__ import annotations

import copy

import pytest
import torch

import bettervit


def _aot_capture(graphs: list):
    """A torch.compile backend that runs AOTAutograd (forward and backward graphs, as Inductor receives them) and
    records the graphs."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def keep(gm, _inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=keep, bw_compiler=keep)

    return backend


def _dtype_views(graphs) -> list[str]:
    """Nodes that reinterpret a tensor's bytes as another dtype (Inductor on CUDA cannot lower bool -> uint8)."""
    bad = []
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target in (torch.ops.aten.view.dtype,):
                bad.append(str(node.format_node()))
    return bad


@pytest.mark.slow
def test_compiled_training_step_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = bettervit.create_model("hiera_nano", num_classes=5, drop_path_rate=0.0).train()
    ref = copy.deepcopy(model)
    graphs: list = []
    compiled = torch.compile(model, fullgraph=True, backend=_aot_capture(graphs))
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    loss = torch.nn.functional.cross_entropy(compiled(x), y)
    loss.backward()
    ref_loss = torch.nn.functional.cross_entropy(ref(x), y)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=n)
    assert len(graphs) == 2  # one forward, one backward graph: no graph break, the q-pool backward traced
    assert not _dtype_views(graphs)


def test_compiled_inference_fullgraph_matches_eager_at_another_size():
    model = bettervit.create_model("hiera_nano", num_classes=5).eval()
    compiled = torch.compile(model, fullgraph=True, backend=_aot_capture([]))
    x = torch.randn(2, 3, 96, 64)  # not the build size: the resampled position embedding is in the graph
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_torch_export_dynamic_batch():
    model = bettervit.create_model("hiera_nano", num_classes=5).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch}})
    with torch.no_grad():
        for b in (1, 3):
            x = torch.randn(b, 3, 64, 64)
            torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_onnx_export_dynamic_batch_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = bettervit.create_model("hiera_nano", num_classes=5).eval()
    torch.nn.init.normal_(model.head.fc.weight, std=1.0)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), dynamo=True, dynamic_shapes={"x": {0: batch}},
                                verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 64)
        (out,) = session.run(None, {name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-4, rtol=1e-4)
