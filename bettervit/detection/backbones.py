"""Detection backbones from bettervit's image models: a feature pyramid with its true strides.

Two paths, chosen by the family:

- plain ViTs (EVA-02, EVA): ViTDet (Li et al. 2022): the windowed trunk with a few global blocks and the simple
  feature pyramid of ``bettervit.models.vitdet`` (maps at 4, 2, 1, 1/2 of the patch grid), plus ``p6`` for the RPN:
  a stride-2 subsampling of ``p5`` (detectron2's ``LastLevelMaxPool``: kernel 1, stride 2);
- hierarchical models (MaxViT, Hiera, SAM2's HieraDet): ``create_model(..., features_only=True)`` at strides 4, 8,
  16, 32 through ``torchvision.ops.FeaturePyramidNetwork`` (Lin et al. 2017) with its max-pooled extra level.

Every wrapper returns an ordered dict of NCHW maps with ``out_channels`` channels and declares ``strides`` (name ->
pixels per cell) and ``roi_names`` (the levels RoIs are pooled from; the RPN sees all of them). torchvision's
``MultiScaleRoIAlign`` infers a level's scale by rounding the map / image ratio to a power of two, and its level
mapper needs integer log2 strides, so :func:`check_strides` refuses any other pyramid (a patch-14 EVA-02 gives strides
3.5 / 7 / 14 / 28) and the detector pools at the declared strides (``detection.models.StridedRoIAlign``).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

#: families built as ViTDet (plain trunk + simple feature pyramid); every other image family goes through the FPN
VITDET_FAMILIES = ("eva02", "eva")
FPN_FAMILIES = ("maxvit", "hiera", "hieradet")


def check_strides(strides: dict[str, float], what: str) -> None:
    """One-line ValueError unless every stride is a power of two (what torchvision's RoI pooler can represent)."""
    bad = [s for s in strides.values() if s <= 0 or 2 ** round(math.log2(s)) != s]
    if bad:
        shown = ", ".join(f"{s:g}" for s in strides.values())
        raise ValueError(f"{what}: feature strides ({shown}) are not powers of two; torchvision's MultiScaleRoIAlign "
                         "would pool them at the nearest powers of two (wrong boxes); build EVA-02 / EVA at "
                         "patch_size=16")


class ViTDetPyramid(nn.Module):
    """``ViTDetBackbone`` (p2-p5) plus p6 = p5 subsampled by 2: images -> {"p2": stride 4P/16 ... "p6"}."""

    def __init__(self, vitdet: nn.Module) -> None:
        super().__init__()
        self.body = vitdet
        self.out_channels = vitdet.out_channels
        self.strides = dict(vitdet.strides)
        self.strides["p6"] = self.strides["p5"] * 2
        self.roi_names = list(vitdet.names)
        check_strides(self.strides, "ViTDet backbone")

    @property
    def trunk(self) -> nn.Module:
        return self.body.backbone

    @property
    def trunk_prefix(self) -> str:
        return "body.backbone."

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        feats = OrderedDict(self.body(x))
        feats["p6"] = F.max_pool2d(feats["p5"], kernel_size=1, stride=2)  # (B, C, ceil(h/2), ceil(w/2))
        return feats


class FPNBackbone(nn.Module):
    """A ``features_only`` hierarchical model (levels at strides 4-32) + torchvision's FPN with a max-pooled p6."""

    def __init__(self, features: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = features
        channels = features.feature_info.channels()
        reductions = features.feature_info.reduction()
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.roi_names = [str(i) for i in range(len(channels))]
        self.strides = {n: float(r) for n, r in zip(self.roi_names, reductions)}
        self.strides["pool"] = float(reductions[-1]) * 2
        check_strides(self.strides, "FPN backbone")

    @property
    def trunk(self) -> nn.Module:
        return self.body.model

    @property
    def trunk_prefix(self) -> str:
        return "body.model."

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        maps = self.body(x)
        return self.fpn(OrderedDict((n, m) for n, m in zip(self.roi_names, maps)))


def build_backbone(
    name: str, *, pretrained: bool | str = False, img_size: int = 1024, out_channels: int = 256,
    patch_size: int = 16, window_size: int = 16, num_global: int = 4, **overrides,
) -> nn.Module:
    """A detection backbone for any registered image model ``name`` (pyramid + declared strides).

    ``pretrained``: anything ``create_model(pretrained=...)`` takes (True, a hub id, a timm / official / bettervit
    run / MAE / MIM checkpoint); it is loaded into the trunk. ``overrides``: trunk config fields (``drop_path_rate``,
    ``depth``, ``embed_dim`` ...). ``img_size`` sets the trunk's stored position grid. EVA-02 / EVA use
    ``patch_size``, ``window_size`` and ``num_global`` (ViTDet); ``patch_size`` != 16 is refused by
    :func:`check_strides` unless the strides stay powers of two.
    """
    from .. import create_model
    from ..factory import get_entry

    entry = get_entry(name)
    family = entry.family
    if getattr(entry.config(), "num_frames", 0):
        raise ValueError(f"{name} is a video model; detection needs an image model")
    if family in VITDET_FAMILIES:
        from ..models.vitdet import vitdet_eva02

        depth = overrides.get("depth", entry.config().depth)
        num_global = min(num_global, depth)  # tiny test trunks: every block global
        vitdet = vitdet_eva02(name, pretrained=pretrained, img_size=img_size, patch_size=patch_size,
                              window_size=window_size, num_global=num_global, out_channels=out_channels, **overrides)
        backbone = ViTDetPyramid(vitdet)
    elif family in FPN_FAMILIES:
        if family != "maxvit":
            overrides.setdefault("img_size", img_size)
        # the last four levels: strides 4, 8, 16, 32 (MaxViT's stride-2 stem level left out)
        features = create_model(name, pretrained=pretrained, features_only=True, out_indices=4, **overrides)
        if features.feature_info.reduction() != [4, 8, 16, 32]:
            raise ValueError(f"{name}: expected feature levels at strides 4, 8, 16, 32, got "
                             f"{features.feature_info.reduction()}")
        backbone = FPNBackbone(features, out_channels)
    else:
        raise ValueError(f"no detection backbone for family {family!r} ({name}); expected one of "
                         f"{', '.join(VITDET_FAMILIES + FPN_FAMILIES)}")
    backbone.pretrained_cfg = dict(backbone.trunk.pretrained_cfg)
    return backbone


def image_norm(backbone: nn.Module) -> tuple[list[float], list[float]]:
    """The trunk's input mean and std from its ``pretrained_cfg`` (ImageNet's when absent)."""
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))]
    std = [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))]
    return mean, std


def size_multiple(backbone: nn.Module) -> int:
    """Input sides must be multiples of this (the coarsest RoI level's stride; ViTDet: 2 * patch)."""
    return int(max(backbone.strides[n] for n in backbone.roi_names))


