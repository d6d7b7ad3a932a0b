"""The oneDNN inference kernels and their packed-weight cache (bettervit/layers/onednn.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bettervit.layers import onednn

pytestmark = pytest.mark.skipif(not onednn.AVAILABLE, reason="this torch build has no oneDNN ops")


def _linear() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(24, 40)


def test_kernels_match_plain_ops():
    lin, x = _linear(), torch.randn(2, 7, 24)
    with torch.no_grad():
        ref = F.linear(x, lin.weight, lin.bias)
        torch.testing.assert_close(onednn.linear(x, lin.weight, lin.bias), ref)
        torch.testing.assert_close(onednn.linear(x, lin.weight, lin.bias, "swish"), F.silu(ref))
        torch.testing.assert_close(onednn.linear(x, lin.weight, lin.bias, "gelu", "none"), F.gelu(ref))
        other = torch.randn(2, 7, 40)
        torch.testing.assert_close(onednn.linear_add(x, other, lin.weight, lin.bias), ref + other)
        torch.testing.assert_close(onednn.linear_mul(x, other, lin.weight, lin.bias), ref * other)
        half = F.linear(x, lin.weight[10:30], lin.bias[10:30])
        torch.testing.assert_close(onednn.linear(x, lin.weight, lin.bias, rows=(10, 30)), half)


def test_packed_weight_is_cached_and_follows_every_kind_of_update():
    lin, x = _linear(), torch.randn(5, 24)
    with torch.no_grad():
        first = onednn.packed(lin.weight)
        assert onednn.packed(lin.weight) is first  # reordered once
        lin.weight.mul_(2.0)  # in place, as an optimizer step: the version counter moves
        torch.testing.assert_close(onednn.linear(x, lin.weight, lin.bias), F.linear(x, lin.weight, lin.bias))
    lin.weight.data.add_(1.0)  # through .data: no version bump, caught by the sampled entries
    with torch.inference_mode():
        torch.testing.assert_close(onednn.linear(x, lin.weight, lin.bias), F.linear(x, lin.weight, lin.bias))
    lin.weight.data = torch.randn(40, 24)  # new storage
    with torch.no_grad():
        torch.testing.assert_close(onednn.linear(x, lin.weight, lin.bias), F.linear(x, lin.weight, lin.bias))
    onednn.clear_packed()
    with torch.no_grad():
        assert onednn.packed(lin.weight) is not first


def test_cache_lets_go_of_dropped_parameters():
    lin = _linear()
    with torch.no_grad():
        onednn.packed(lin.weight)
    n = len(onednn._PACKED)
    del lin
    assert len(onednn._PACKED) == n - 1
