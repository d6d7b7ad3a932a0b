"""ViTDet simple feature pyramid on a plain EVA-02."""
from __future__ import annotations

import pytest
import torch

import bettervit
from bettervit.models.vitdet import ViTDetBackbone


def test_pyramid_strides_4_8_16_32_with_256_channels():
    """With 16x16 patches (EVA-02's detection setting) the maps are at strides 4, 8, 16, 32 exactly."""
    net = ViTDetBackbone(bettervit.create_model("eva02_tiny_patch14_224", patch_size=16, depth=2))
    x = torch.randn(2, 3, 128, 160)
    feats = net(x)
    assert list(feats) == ["p2", "p3", "p4", "p5"]
    for (name, f), stride in zip(feats.items(), (4, 8, 16, 32)):
        assert net.strides[name] == stride
        assert f.shape == (2, 256, 128 // stride, 160 // stride)
        assert torch.isfinite(f).all()


def test_pyramid_with_patch14_scales_the_grid():
    net = ViTDetBackbone(bettervit.create_model("eva02_tiny_patch14_224", depth=1), out_channels=64)
    feats = net(torch.randn(1, 3, 112, 112))  # 8x8 patch grid
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert all(f.shape[1] == 64 for f in feats.values())
    assert list(net.strides.values()) == [3.5, 7.0, 14.0, 28.0]


def test_pyramid_trains_end_to_end():
    net = ViTDetBackbone(bettervit.create_model("eva02_tiny_patch14_224", patch_size=16, depth=1))
    sum(f.mean() for f in net(torch.randn(1, 3, 64, 64)).values()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None and "fc_norm" not in n]  # head unused
    assert not missing, missing


def test_patch14_checkpoint_loads_into_patch16_backbone(tmp_path):
    """The 14x14 patch kernel is resized (bicubic) to 16x16 on load, as EVA-02's detection code does."""
    src = bettervit.create_model("eva02_tiny_patch14_224", depth=1)
    torch.save(src.state_dict(), tmp_path / "t.pth")
    dst = bettervit.create_model("eva02_tiny_patch14_224", patch_size=16, depth=1, pretrained=str(tmp_path / "t.pth"))
    assert dst.patch_embed.proj.weight.shape == (192, 3, 16, 16)
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_bad_input_size():
    net = ViTDetBackbone(bettervit.create_model("eva02_tiny_patch14_224", patch_size=16, depth=1))
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(1, 3, 48, 64))
