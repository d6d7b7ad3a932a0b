"""The oneDNN kernels of the CPU pass (bettervit/optimize/onednn.py): packed linears with fused epilogues."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bettervit.optimize import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN ops")


@torch.no_grad()
def test_packed_linear_and_fused_epilogues():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 80)
    x, r = torch.randn(2, 7, 48), torch.randn(2, 7, 80)
    p = onednn.PackedLinear.from_linear(lin)
    ref = lin(x)
    torch.testing.assert_close(p(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.act(x, "gelu", "tanh"), F.gelu(ref, approximate="tanh"), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.act(x, "gelu", "none"), F.gelu(ref), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.act(x, "swish"), F.silu(ref), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.add(x, r), ref + r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.mul(x, r), ref * r, rtol=1e-5, atol=1e-5)
    half = onednn.PackedLinear.from_linear(lin, rows=(40, 80))  # e.g. the value half of a packed SwiGLU fc1
    torch.testing.assert_close(half(x), ref[..., 40:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_packed_linear_keeps_one_copy_and_plain_state_dict():
    lin = torch.nn.Linear(32, 64)
    p = onednn.PackedLinear.from_linear(lin)
    assert [n for n, _ in p.named_parameters()] == ["bias"]  # the plain weight is not kept beside the packed one
    sd = p.state_dict()
    assert set(sd) == {"weight", "bias"}
    torch.testing.assert_close(sd["weight"], lin.weight)
    x = torch.randn(3, 32)
    torch.testing.assert_close(copy.deepcopy(p)(x), p(x))
    module = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    ref = module(x)
    onednn.pack_linears(module)
    assert isinstance(module[0], onednn.PackedLinear) and isinstance(module[2], onednn.PackedLinear)
    torch.testing.assert_close(module(x), ref, rtol=1e-5, atol=1e-5)
