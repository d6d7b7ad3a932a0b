"""EVA-02 masked image modeling: block masking, the MIM model, teachers, and loading the student into a classifier."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bettervit
from bettervit.pretrain.masking import batch_block_mask, block_mask
from bettervit.pretrain.mim import MIM, MIMOutput, build_mim, teacher_patch_features


def test_block_mask_ratio_blocks_and_convention():
    g = torch.Generator().manual_seed(0)
    masks = [block_mask((16, 16), 0.4, generator=g) for _ in range(20)]
    target = round(0.4 * 256)
    for m in masks:
        assert m.dtype == torch.bool and m.shape == (16, 16)
        assert target - 8 <= int(m.sum()) <= target  # True = masked, about 40%, never more
    # block-wise, not scattered: most masked patches have a masked 4-neighbour
    m = masks[0].float()
    nb = torch.zeros_like(m)
    nb[1:] += m[:-1]; nb[:-1] += m[1:]; nb[:, 1:] += m[:, :-1]; nb[:, :-1] += m[:, 1:]
    assert ((nb > 0) & (m > 0)).sum() >= 0.9 * m.sum()
    # deterministic under a seeded generator, different across draws
    a = block_mask((16, 16), generator=torch.Generator().manual_seed(3))
    b = block_mask((16, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(masks[0], masks[1])


def _largest_blob(m: torch.Tensor) -> set:
    seen, best = set(), set()
    for start in map(tuple, m.nonzero().tolist()):
        if start in seen:
            continue
        blob, todo = set(), [start]
        while todo:
            i, j = todo.pop()
            if (i, j) in blob or not (0 <= i < m.shape[0] and 0 <= j < m.shape[1]) or not m[i, j]:
                continue
            blob.add((i, j))
            todo += [(i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)]
        seen |= blob
        best = max(best, blob, key=len)
    return best


def test_blocks_have_min_patches_and_bounded_aspect():
    """With a budget of 16, the first (largest) block is a rectangle of ~16 patches, aspect within [0.3, 1/0.3]."""
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        blob = _largest_blob(block_mask((32, 32), 16 / 1024, min_patches=16, generator=g))
        rows, cols = {i for i, _ in blob}, {j for _, j in blob}
        h, w = max(rows) - min(rows) + 1, max(cols) - min(cols) + 1
        assert h * w == len(blob) >= 12  # a full rectangle; rounding sqrt(area * aspect) may lose a little
        assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3


def test_batch_block_mask_shape_and_bad_ratio():
    m = batch_block_mask(3, (8, 6), 0.4, generator=torch.Generator().manual_seed(0))
    assert m.shape == (3, 48) and m.dtype == torch.bool
    with pytest.raises(ValueError, match="mask ratio"):
        block_mask((8, 8), 1.5)


def _small_mim(**kw) -> MIM:
    teacher = bettervit.create_model("eva02_tiny_patch14_224", depth=1)
    return build_mim("eva02_tiny_patch14_224", teacher, img_size=112, depth=2, **kw)


def test_mim_output_and_frozen_teacher():
    torch.manual_seed(0)
    mim = _small_mim()
    x = torch.randn(2, 3, 112, 112)
    out = mim(x)
    assert isinstance(out, MIMOutput)
    M = int(out.mask.sum())
    assert out.mask.shape == (2, 64) and out.pred.shape == out.target.shape == (M, 192)
    assert -1.0 <= out.loss.item() <= 1.0
    out.loss.backward()
    assert all(p.grad is None for p in mim.teacher.parameters())
    assert mim.mask_token.grad is not None and mim.lm_head.weight.grad is not None
    assert not mim.teacher.training and mim.train().teacher.training is False
    # an explicit mask picks the predicted patches
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, :10] = True
    assert mim(x, mask).pred.shape == (20, 192)


def test_mim_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    mim = _small_mim()
    x = torch.randn(2, 3, 112, 112)
    mask = batch_block_mask(2, (8, 8), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in mim.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        loss = mim(x, mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses


class ConvTeacher(nn.Module):
    """A stand-in for a user's vision tower: 16x16 patches (other grid than the student), NCHW output."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 16, stride=16)

    def forward(self, x):
        return self.proj(x)


def test_user_teacher_on_another_grid_is_resized():
    torch.manual_seed(0)
    mim = build_mim("eva02_tiny_patch14_224", ConvTeacher(), img_size=112, depth=1)  # teacher_dim by dry run
    assert mim.lm_head.out_features == 32
    x = torch.randn(1, 3, 112, 112)
    tgt = mim.target(x, (8, 8))
    assert tgt.shape == (1, 64, 32)  # 7x7 teacher grid -> 8x8 student grid
    out = mim(x)
    assert out.target.shape == (int(out.mask.sum()), 32)


def test_teacher_tokens_with_prefix():
    class TokenTeacher(nn.Module):
        def forward(self, x):
            return torch.randn(x.shape[0], 1 + 8 * 8, 16)  # class token + 8x8 patch tokens

    feats = teacher_patch_features(TokenTeacher(), torch.zeros(2, 3, 112, 112))
    assert feats.shape == (2, 16, 8, 8)
    with pytest.raises(ValueError, match="teacher must return"):
        teacher_patch_features(lambda x: torch.zeros(2, 5), torch.zeros(2, 3, 112, 112))


def test_teacher_by_name_with_checkpoint(tmp_path):
    t = bettervit.create_model("eva02_tiny_patch14_224", img_size=56)
    torch.save(t.state_dict(), tmp_path / "teacher.pth")
    mim = build_mim("eva02_tiny_patch14_224", "eva02_tiny_patch14_224", teacher_checkpoint=str(tmp_path / "teacher.pth"),
                    img_size=56, depth=1)
    torch.testing.assert_close(mim.teacher.cls_token, t.cls_token)
    with pytest.raises(ValueError, match="headless"):
        build_mim("eva02_tiny_patch14_224", ConvTeacher(), num_classes=10)


def test_student_checkpoint_loads_into_classifier(tmp_path):
    """The MIM state_dict (no teacher inside) loads into a classifier via create_model(pretrained=path)."""
    torch.manual_seed(0)
    mim = _small_mim()
    sd = mim.state_dict()
    assert not any(k.startswith("teacher") for k in sd)
    assert {"mask_token", "lm_head.weight"} <= set(sd) and "encoder.blocks.1.attn.qkv.weight" in sd
    torch.save(sd, tmp_path / "mim.pth")
    clf = bettervit.create_model("eva02_tiny_patch14_336", depth=2, num_classes=5, pretrained=str(tmp_path / "mim.pth"))
    torch.testing.assert_close(clf.blocks[1].attn.qkv.weight, mim.encoder.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(clf.fc_norm.weight, mim.encoder.fc_norm.weight)
    assert clf.pos_embed.shape[1] == 1 + 24 * 24  # 8x8 pretraining grid resized to 24x24
    trunk = bettervit.create_model("eva02_tiny_patch14_224", img_size=112, depth=2, pretrained=str(tmp_path / "mim.pth"))
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(trunk.eval()(x), mim.encoder.eval()(x))
