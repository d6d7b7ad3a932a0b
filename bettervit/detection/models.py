"""Mask R-CNN and Cascade Mask R-CNN on bettervit backbones, assembled from ``torchvision.models.detection``'s parts.

``build_detector(DetectorConfig(...))`` returns a :class:`Detector` (a torchvision ``GeneralizedRCNN``): the
backbone of :mod:`bettervit.detection.backbones`, torchvision's ``AnchorGenerator`` + ``RegionProposalNetwork`` with
an ``RPNHead`` of ``rpn_convs`` convolutions, and RoI heads -- torchvision's ``RoIHeads`` (Mask R-CNN, He et al.
2017; Faster R-CNN when the data has no masks) or :class:`~bettervit.detection.cascade.CascadeRoIHeads` (Cai &
Vasconcelos 2018). The heads are ViTDet's (Li et al. 2022, detectron2 ``projects/ViTDet``): a 4conv1fc box head and
a 4-conv mask head, each conv followed by a LayerNorm over channels (``norm="ln"``).

Input images arrive already resized and padded by the data pipeline (``bettervit.detection.transforms``), so the
detector's transform only normalises (mean / std from the backbone's ``pretrained_cfg``) and batches to a multiple of
32; it never resizes. RoIs are pooled at the backbone's declared strides (:class:`StridedRoIAlign`), never at strides
guessed from map sizes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

from .backbones import build_backbone, check_strides, image_norm

DETECTORS = ("mask_rcnn", "cascade_mask_rcnn", "rt_detr")  # rt_detr: bettervit.detection.rtdetr


@dataclass
class DetectorConfig:
    """Everything that shapes a detector (stored in every checkpoint; defaults: COCO-sized, as ViTDet's)."""

    detector: str = "mask_rcnn"  # mask_rcnn | cascade_mask_rcnn | rt_detr
    backbone: str = "hiera_nano"
    num_classes: int = 80  # foreground classes (the predictors get one more: background)
    masks: bool = True  # False: Faster R-CNN / Cascade R-CNN (no mask branch)
    img_size: int = 1024  # the trunk's stored position grid and the data's canvas side
    backbone_overrides: dict = field(default_factory=dict)  # trunk config fields (drop_path_rate, depth ...)
    patch_size: int = 16  # ViTDet (EVA-02 / EVA)
    window_size: int = 16
    num_global: int = 4
    fpn_channels: int = 256
    anchor_scale: float = 8.0  # anchor side = anchor_scale x level stride (COCO: 32 at stride 4 ... 512 at 64)
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    rpn_convs: int = 2
    rpn_batch: int = 256
    rpn_pre_nms: tuple = (2000, 1000)  # (training, testing), per level
    rpn_post_nms: tuple = (1000, 1000)
    roi_batch: int = 512  # sampled RoIs per image (stage 1)
    roi_pos_fraction: float = 0.25
    box_convs: int = 4
    conv_dim: int = 256
    fc_dim: int = 1024
    mask_convs: int = 4
    mask_dim: int = 256
    norm: str = "ln"  # ln | none: LayerNorm over channels after each head conv
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    cascade_ious: tuple = (0.5, 0.6, 0.7)
    cascade_weights: tuple = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
    rtdetr: dict = field(default_factory=dict)  # rt_detr: RTDetrV2Config fields (empty: transformers' = R50's)

    def validate(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"--detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.norm not in ("ln", "none"):
            raise ValueError(f"norm must be ln or none, got {self.norm!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.cascade_ious) != len(self.cascade_weights):
            raise ValueError("cascade_ious and cascade_weights must have one entry per stage")
        for name in ("fpn_channels", "conv_dim", "fc_dim", "mask_dim", "roi_batch", "rpn_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("aspect_ratios", "rpn_pre_nms", "rpn_post_nms", "cascade_ious"):
            if k in kw:
                kw[k] = tuple(kw[k])
        if "cascade_weights" in kw:
            kw["cascade_weights"] = tuple(tuple(w) for w in kw["cascade_weights"])
        return cls(**kw)


def json_ready(obj: Any) -> Any:
    """Tuples -> lists, recursively (for JSON / YAML and weights_only checkpoints)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


class StridedRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` whose level scales are given (1 / the backbone's strides), not inferred per call.

    Level assignment is torchvision's (and detectron2's ``ROIPooler``): ``floor(4 + log2(sqrt(area) / 224))``
    clamped to the available levels. Strides must be powers of two (:func:`check_strides`).
    """

    def __init__(self, featmap_names: list[str], strides: list[float], output_size: int, sampling_ratio: int = 0):
        super().__init__(featmap_names, output_size, sampling_ratio)
        check_strides(dict(zip(featmap_names, strides)), "RoI pooler")
        self.scales = [1.0 / s for s in strides]
        self.map_levels = initLevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])))


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: the data pipeline has already sized the images."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


def _norm_layer(cfg: DetectorConfig):
    if cfg.norm == "none":
        return None
    from ..models.vitdet import ChannelLayerNorm

    return ChannelLayerNorm


def _box_heads(cfg: DetectorConfig, channels: int, agnostic: bool) -> tuple[nn.Module, nn.Module]:
    from .cascade import AgnosticBoxPredictor

    head = FastRCNNConvFCHead((channels, 7, 7), [cfg.conv_dim] * cfg.box_convs, [cfg.fc_dim],
                              norm_layer=_norm_layer(cfg))
    k = cfg.num_classes + 1
    return head, (AgnosticBoxPredictor(cfg.fc_dim, k) if agnostic else FastRCNNPredictor(cfg.fc_dim, k))


def _mask_parts(cfg: DetectorConfig, backbone: nn.Module) -> dict[str, nn.Module]:
    if not cfg.masks:
        return {}
    strides = [backbone.strides[n] for n in backbone.roi_names]
    return dict(
        mask_roi_pool=StridedRoIAlign(backbone.roi_names, strides, 14, 2),
        mask_head=MaskRCNNHeads(backbone.out_channels, [cfg.mask_dim] * cfg.mask_convs, 1,
                                norm_layer=_norm_layer(cfg)),
        mask_predictor=MaskRCNNPredictor(cfg.mask_dim, cfg.mask_dim, cfg.num_classes + 1),
    )


def _rpn(cfg: DetectorConfig, backbone: nn.Module) -> RegionProposalNetwork:
    levels = list(backbone.strides.values())  # every map the backbone returns, in order
    sizes = tuple((cfg.anchor_scale * s,) for s in levels)
    anchors = AnchorGenerator(sizes, (tuple(cfg.aspect_ratios),) * len(levels))
    head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=cfg.rpn_convs)
    return RegionProposalNetwork(
        anchors, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=cfg.rpn_batch,
        positive_fraction=0.5, pre_nms_top_n=dict(training=cfg.rpn_pre_nms[0], testing=cfg.rpn_pre_nms[1]),
        post_nms_top_n=dict(training=cfg.rpn_post_nms[0], testing=cfg.rpn_post_nms[1]), nms_thresh=0.7)


def _roi_heads(cfg: DetectorConfig, backbone: nn.Module) -> nn.Module:
    strides = [backbone.strides[n] for n in backbone.roi_names]
    box_pool = StridedRoIAlign(backbone.roi_names, strides, 7, 2)
    common = dict(fg_iou_thresh=cfg.cascade_ious[0], bg_iou_thresh=cfg.cascade_ious[0],
                  batch_size_per_image=cfg.roi_batch, positive_fraction=cfg.roi_pos_fraction,
                  score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img,
                  **_mask_parts(cfg, backbone))
    if cfg.detector == "mask_rcnn":
        head, predictor = _box_heads(cfg, backbone.out_channels, agnostic=False)
        return RoIHeads(box_pool, head, predictor, bbox_reg_weights=None, **common)
    from .cascade import CascadeRoIHeads

    stages = [_box_heads(cfg, backbone.out_channels, agnostic=True) for _ in cfg.cascade_ious]
    return CascadeRoIHeads(box_pool, [h for h, _ in stages], [p for _, p in stages], ious=cfg.cascade_ious,
                           weights=cfg.cascade_weights, **common)


class Detector(GeneralizedRCNN):
    """A torchvision two-stage detector with bettervit's hooks: layer ids of the trunk for layer-wise LR decay,
    ``no_weight_decay`` and gradient checkpointing forwarded to the trunk, and its :class:`DetectorConfig`.

    ``forward(images, targets)`` is torchvision's: images a list of float (3, H, W) tensors in [0, 1]; in training a
    dict of losses, in eval a list of ``{"boxes", "labels", "scores", "masks"}`` per image.
    """

    def __init__(self, cfg: DetectorConfig, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module,
                 transform: nn.Module) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.config = cfg

    @property
    def trunk(self) -> nn.Module:
        return self.backbone.trunk

    def _trunk_names(self) -> tuple[str, dict[str, str]]:
        prefix = "backbone." + self.backbone.trunk_prefix
        return prefix, {n: n[len(prefix):] for n, _ in self.named_parameters() if n.startswith(prefix)}

    def num_layer_ids(self) -> int:
        return self.trunk.num_layer_ids()

    def param_layer_ids(self) -> dict[str, int]:
        """Trunk parameters keep the trunk's layer id (stem 0 ... last block); pyramid and heads the last id."""
        _, trunk = self._trunk_names()
        last = self.num_layer_ids() - 1
        return {n: (min(self.trunk.layer_id(trunk[n]), last) if n in trunk else last) for n, _ in
                self.named_parameters()}

    def no_weight_decay(self) -> set[str]:
        prefix, _ = self._trunk_names()
        skip = self.trunk.no_weight_decay() if hasattr(self.trunk, "no_weight_decay") else set()
        return {prefix + s for s in skip}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


def build_detector(cfg: DetectorConfig, pretrained: bool | str = False, backbone: nn.Module | None = None) -> Detector:
    """The detector ``cfg`` describes; ``pretrained`` (anything ``create_model`` takes) goes into the trunk.
    ``backbone``: use this one instead (a module with ``out_channels``, ``strides``, ``roi_names`` and
    ``pretrained_cfg``, e.g. an ``FPNBackbone`` on another library's features; benchmarks compare them so)."""
    cfg.validate()
    if cfg.detector == "rt_detr":
        from .rtdetr import build_rtdetr

        return build_rtdetr(cfg, pretrained)
    if backbone is None:
        backbone = build_backbone(cfg.backbone, pretrained=pretrained, img_size=cfg.img_size,
                                  out_channels=cfg.fpn_channels, patch_size=cfg.patch_size,
                                  window_size=cfg.window_size, num_global=cfg.num_global, **cfg.backbone_overrides)
    mean, std = image_norm(backbone)
    transform = NoResizeTransform(cfg.img_size, cfg.img_size, mean, std, size_divisible=32)
    return Detector(cfg, backbone, _rpn(cfg, backbone), _roi_heads(cfg, backbone), transform)


def detector_loss(losses: dict[str, Tensor]) -> Tensor:
    """The training objective: the sum of torchvision's named losses (RPN, per-stage box, mask)."""
    return torch.stack([v for v in losses.values()]).sum()
