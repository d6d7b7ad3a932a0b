"""Hiera's CPU inference pass (bettervit.optimize): same outputs as the plain model, packed weights in place of the
plain ones, mask-unit blocks in chunks."""
from __future__ import annotations

import pytest
import torch

import bettervit
from bettervit.models.hiera import HieraBlock
from bettervit.optimize import onednn
from bettervit.optimize.hiera import FastHieraBlock

pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch built without oneDNN")


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    model = bettervit.create_model("hiera_nano", num_classes=10).eval()
    torch.nn.init.normal_(model.head.fc.weight, std=1.0)  # logits of a useful scale
    return model


@pytest.mark.parametrize("hw", [(64, 64), (96, 64), (64, 128)])
def test_optimized_equals_plain(nano, hw):
    fast = bettervit.optimize(nano)
    x = torch.randn(3, 3, *hw)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), nano(x), atol=1e-4, rtol=1e-4)
        a = fast.forward_intermediates(x, intermediates_only=True)
        b = nano.forward_intermediates(x, intermediates_only=True)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)


def test_weights_packed_in_place_and_state_dict_kept(nano):
    fast = bettervit.optimize(nano)
    assert all(isinstance(b, FastHieraBlock) for b in fast.blocks)
    assert not any(isinstance(m, HieraBlock) for m in fast.modules())
    assert all(isinstance(b, HieraBlock) for b in nano.blocks)  # the input model is left as it was
    names = {n for n, _ in fast.named_parameters()}
    assert "blocks.0.attn.qkv.weight" not in names and "blocks.0.mlp.fc1.weight" not in names  # no second copy
    sd, ref = fast.state_dict(), nano.state_dict()
    assert sd.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(sd[k], ref[k], atol=0, rtol=0, msg=k)


def test_chunked_mask_unit_blocks_equal_plain(nano, monkeypatch):
    """Chunks of mask units may straddle images: the result does not change."""
    fast = bettervit.optimize(nano)
    calls = []
    chunked = FastHieraBlock._in_chunks
    monkeypatch.setattr(FastHieraBlock, "_in_chunks", lambda self, t: calls.append(t.shape) or chunked(self, t))
    monkeypatch.setattr(FastHieraBlock, "chunk_tokens", 192)  # 3 units of 64 tokens per chunk
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), nano(x), atol=1e-4, rtol=1e-4)
    assert calls


def test_optimized_mae_equals_plain():
    torch.manual_seed(0)
    mae = bettervit.create_model("mae_hiera_nano").eval()
    fast = bettervit.optimize(mae)
    x = torch.randn(2, 3, 64, 64)
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    with torch.no_grad():
        a, b = fast(x, mask=mask), mae(x, mask=mask)
    torch.testing.assert_close(a.pred, b.pred, atol=1e-4, rtol=1e-4)
