"""ViTDet on EVA-02: windowed trunk (windows vs global attention, RoPE per window) and the simple feature pyramid."""
from __future__ import annotations

import pytest
import torch

import bettervit
from bettervit.models.eva import resample_patch_embed, rope_tables
from bettervit.models.vitdet import ViTDetBackbone, global_block_indices, vitdet_eva02


def _trunk(**kw):
    torch.manual_seed(0)
    kw = dict(dict(depth=2, class_token=False, patch_size=16, num_classes=0), **kw)
    return bettervit.create_model("eva02_tiny_patch14_224", **kw).eval()


def test_one_window_covering_the_grid_equals_global_attention():
    """One 6x6-token window covering the whole 6x6 grid: the windowed model (RoPE per window) equals global attention,
    all blocks windowed or some global."""
    glob = _trunk()
    win = _trunk(window_size=6)
    win.load_state_dict(glob.state_dict())
    x = torch.randn(2, 3, 96, 96)  # 6x6 grid = one window
    with torch.no_grad():
        torch.testing.assert_close(win.forward_features(x), glob.forward_features(x), rtol=1e-5, atol=1e-5)
        mixed = _trunk(window_size=6, global_blocks=(1,))
        mixed.load_state_dict(glob.state_dict())
        torch.testing.assert_close(mixed.forward_features(x), glob.forward_features(x), rtol=1e-5, atol=1e-5)


def test_windowed_blocks_see_only_their_window():
    """All blocks windowed (2x2-token windows): changing one window's pixels leaves the other windows' tokens alone;
    a global block spreads the change everywhere."""
    win = _trunk(window_size=2)
    x = torch.randn(1, 3, 64, 96)  # 4x6 grid: 2x3 windows
    y = x.clone()
    y[..., :32, :32] += 1.0  # the top-left window (tokens rows 0-1, cols 0-1)
    with torch.no_grad():
        a, b = (win.forward_intermediates(t, indices=1, intermediates_only=True)[0] for t in (x, y))
    changed = (a - b).abs().amax(dim=1)[0] > 1e-6  # (4, 6)
    assert changed[:2, :2].all() and not changed[2:].any() and not changed[:, 2:].any()
    glob = _trunk(window_size=2, global_blocks=(1,))
    with torch.no_grad():
        a, b = (glob.forward_intermediates(t, indices=1, intermediates_only=True)[0] for t in (x, y))
    assert ((a - b).abs().amax(dim=1)[0] > 1e-6).all()


def test_windowed_attention_uses_per_window_rope():
    """A windowed block equals the global block run on each window as its own image (RoPE for one window)."""
    win = _trunk(window_size=3, depth=1)
    blk = win.blocks[0]
    x = torch.randn(1, 6 * 9, 192)  # tokens of a 6x9 grid
    with torch.no_grad():
        got = blk(x, rope_tables((3, 3), 64, num_prefix=0), (6, 9)).view(1, 6, 9, 192)
        blk.window_size = 0
        tables = rope_tables((3, 3), 64, num_prefix=0)
        for i in range(0, 6, 3):
            for j in range(0, 9, 3):
                w = x.view(1, 6, 9, 192)[:, i:i + 3, j:j + 3].reshape(1, 9, 192)
                torch.testing.assert_close(got[:, i:i + 3, j:j + 3].reshape(1, 9, 192), blk(w, tables, (3, 3)))


def test_windows_pad_grids_that_do_not_tile():
    win = _trunk(window_size=4, global_blocks=(0,))
    with torch.no_grad():
        maps = win.forward_intermediates(torch.randn(2, 3, 80, 112), intermediates_only=True)  # 5x7 grid
    assert [tuple(f.shape) for f in maps] == [(2, 192, 5, 7)] * 2


def test_vitdet_eva02_builder_matches_eva02_det_layout(tmp_path):
    src = bettervit.create_model("eva02_tiny_patch14_224", depth=4)
    torch.save(src.state_dict(), tmp_path / "t.pth")
    net = vitdet_eva02("eva02_tiny_patch14_224", str(tmp_path / "t.pth"), img_size=128, depth=4, num_global=2,
                       window_size=4)
    trunk = net.backbone
    assert global_block_indices(12) == (2, 5, 8, 11) and global_block_indices(24) == (5, 11, 17, 23)
    assert [b.window_size for b in trunk.blocks] == [4, 0, 4, 0]
    assert trunk.cls_token is None and trunk.pos_embed.shape == (1, 8 * 8, 192)  # class entry dropped, 16 -> 8 grid
    torch.testing.assert_close(trunk.patch_embed.proj.weight, resample_patch_embed(src.patch_embed.proj.weight, (16, 16)))
    feats = net(torch.randn(1, 3, 128, 192))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 48), (16, 24), (8, 12), (4, 6)]


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
    """The 14x14 patch kernel is resampled to 16x16 on load (FlexiViT's pseudo-inverse resize)."""
    src = bettervit.create_model("eva02_tiny_patch14_224", depth=1)
    torch.save(src.state_dict(), tmp_path / "t.pth")
    dst = bettervit.create_model("eva02_tiny_patch14_224", patch_size=16, depth=1, pretrained=str(tmp_path / "t.pth"))
    assert dst.patch_embed.proj.weight.shape == (192, 3, 16, 16)
    torch.testing.assert_close(dst.patch_embed.proj.weight, resample_patch_embed(src.patch_embed.proj.weight, (16, 16)))
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_bad_input_size():
    net = ViTDetBackbone(bettervit.create_model("eva02_tiny_patch14_224", patch_size=16, depth=1))
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(1, 3, 48, 64))
