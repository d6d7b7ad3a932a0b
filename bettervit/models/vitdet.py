"""ViTDet (Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object Detection") on EVA-02: a plain
EVA-02 trunk with window attention and a simple feature pyramid, so it serves FPN-style detection and segmentation
heads.

The trunk (``vitdet_eva02``), as EVA-02's detection backbone: 16x16 patches (the released 14x14 kernel resampled by
FlexiViT's pseudo-inverse resize on load), no class token, attention within 16x16-token windows in most blocks and
over the whole map in a few evenly spaced ones (4: blocks 2, 5, 8, 11 of 12; 5, 11, 17, 23 of 24), RoPE computed for
one window in windowed blocks and for the whole grid in global ones, the 224 position embedding resized to the
detection grid (1024 / 16 = 64).

From the last block's single map at stride s (the patch size), four maps are made in parallel, without top-down
connections: 4x up (two 2x2 stride-2 deconvolutions, LayerNorm + GELU between), 2x up (one deconvolution), identity,
and 2x down (2x2 max-pool). Each then goes through a 1x1 and a 3x3 convolution (no bias), each followed by a
LayerNorm over channels, to ``out_channels`` (256). With 16x16 patches (as EVA-02's detection models use: build the
backbone with ``patch_size=16``; a 14x14 checkpoint kernel is resampled on load) the strides are exactly 4, 8, 16, 32;
with 14x14 patches they are 3.5, 7, 14, 28.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .eva import Eva


def global_block_indices(depth: int, num_global: int = 4) -> tuple[int, ...]:
    """``num_global`` evenly spaced blocks ending with the last: (2, 5, 8, 11) for 12 blocks, (5, 11, 17, 23) for 24."""
    return tuple((i + 1) * depth // num_global - 1 for i in range(num_global))


def vitdet_eva02(
    name: str = "eva02_base_patch14_224",
    pretrained: bool | str = False,
    *,
    img_size: int | tuple[int, int] = 1024,
    patch_size: int = 16,
    window_size: int = 16,
    num_global: int = 4,
    out_channels: int = 256,
    **overrides,
) -> "ViTDetBackbone":
    """A ViTDet backbone from a registered EVA-02 (and its weights): windowed trunk + simple feature pyramid.

    ``img_size`` sets the stored position-embedding grid (any multiple of 2 * patch_size runs); other keyword
    options override the trunk's config (e.g. ``drop_path_rate=0.1``).
    """
    from .. import create_model
    from ..factory import get_entry

    depth = overrides.get("depth", get_entry(name).config().depth)
    trunk = create_model(name, pretrained=pretrained, num_classes=0, img_size=img_size, patch_size=patch_size,
                         window_size=window_size, global_blocks=global_block_indices(depth, num_global),
                         class_token=False, **overrides)
    return ViTDetBackbone(trunk, out_channels)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dim of an NCHW map (detectron2's ``LayerNorm``)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)  # (B, H, W, C)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


def _conv_norm(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), ChannelLayerNorm(cout))


class SimpleFeaturePyramid(nn.Module):
    """One (B, dim, h, w) map -> maps at scales 4, 2, 1, 1/2 of it, each (B, out_channels, ., .)."""

    scale_factors = (4.0, 2.0, 1.0, 0.5)

    def __init__(self, dim: int, out_channels: int = 256) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        for scale in self.scale_factors:
            if scale == 4.0:
                resample = nn.Sequential(
                    nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), ChannelLayerNorm(dim // 2), nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2))
                width = dim // 4
            elif scale == 2.0:
                resample, width = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), dim // 2
            elif scale == 1.0:
                resample, width = nn.Identity(), dim
            else:
                resample, width = nn.MaxPool2d(2, stride=2), dim
            self.stages.append(nn.Sequential(resample, _conv_norm(width, out_channels, 1),
                                             _conv_norm(out_channels, out_channels, 3)))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [stage(x) for stage in self.stages]


class ViTDetBackbone(nn.Module):
    """A plain EVA-02 + simple feature pyramid: images -> {"p2": stride 4, "p3": 8, "p4": 16, "p5": 32} NCHW maps.

    ``strides`` gives each map's stride in pixels (patch_size / scale). Input sides must be multiples of
    2 * patch_size so the 2x-down map tiles the image exactly.
    """

    names = ("p2", "p3", "p4", "p5")

    def __init__(self, backbone: Eva, out_channels: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.pyramid = SimpleFeaturePyramid(backbone.config.embed_dim, out_channels)
        p = backbone.config.patch_size
        self.strides = {n: p / s for n, s in zip(self.names, SimpleFeaturePyramid.scale_factors)}
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        p = 2 * self.backbone.config.patch_size
        if x.ndim == 4 and (x.shape[-2] % p or x.shape[-1] % p):
            raise ValueError(f"ViTDet input height and width must be multiples of {p}, got {tuple(x.shape[-2:])}")
        (feat,) = self.backbone.forward_intermediates(x, indices=1, intermediates_only=True)  # (B, C, h, w), last block
        return dict(zip(self.names, self.pyramid(feat)))
