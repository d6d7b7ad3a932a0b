"""RT-DETR (RT-DETRv2) on bettervit backbones: Hugging Face transformers' ``RTDetrV2ForObjectDetection``.

RT-DETR (Lv et al., "DETRs Beat YOLOs on Real-time Object Detection", CVPR 2024) and RT-DETRv2 (Lv et al.,
"RT-DETRv2: Improved Baseline with Bag-of-Freebies for Real-Time Detection Transformer", 2024) are end-to-end
detectors: a hybrid encoder (one attention layer on the stride-32 map, a CNN fusion across strides 8 / 16 / 32), a
transformer decoder whose queries are the encoder's top-scoring positions, and a set loss (varifocal + L1 + GIoU) on a
Hungarian matching of queries to objects, with denoising queries during training. Everything past the backbone is
transformers' (model, matcher, loss); this module only

- builds the backbone: any bettervit image model through its timm entry (:func:`bettervit.register_timm`) with
  ``features_only=True`` at strides 8, 16, 32 (MaxViT, Hiera, HieraDet; EVA-02 and EVA through their ``vitdet_``
  pyramid), built by bettervit with the run's weights (``--init``), image size and trunk overrides, and placed into
  transformers' ``TimmBackbone`` after the model is built (transformers would build it without weights and its
  weight init would touch the trunk);
- converts targets (torchvision's: ``boxes`` xyxy pixels on the S x S input, ``labels`` 1..K) to transformers'
  (``class_labels`` 0..K-1, ``boxes`` cx, cy, w, h normalised by S) and outputs back (:func:`postprocess`: top-k over
  the sigmoid class scores of every query and class, as transformers' ``post_process_object_detection`` does);
- gives the result the interface of :class:`bettervit.detection.models.Detector`, so the detection task, the
  COCO evaluation, ``detect eval`` and ``detect predict`` use it unchanged: ``forward(images, targets)`` returns a
  dict of losses in training (their sum is transformers' loss) and per-image ``{"boxes", "labels", "scores"}`` in
  eval. Boxes only: RT-DETR has no mask branch.

``DetectorConfig.rtdetr`` holds ``RTDetrV2Config`` fields; left empty, transformers' defaults are RT-DETRv2-R50's
(d_model 256, 300 queries, 6 decoder layers, 100 denoising queries). The presets in :data:`RTDETR_RECIPES` (merged
into ``bettervit.detection.recipes``) are the published recipe and the small-data defaults.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .models import DetectorConfig

#: the timm prefix under which bettervit's models are reached (a private one: a user's ``register_timm("bv_",
#: pretrained=True)`` must not clash with it)
TIMM_PREFIX = "bvdet_"
#: the strides RT-DETR's hybrid encoder reads (S3, S4, S5)
STRIDES = (8, 16, 32)

_RTDETR = ("lyuwenyu/RT-DETR, {} (Lv et al., DETRs Beat YOLOs on Real-time Object Detection, CVPR 2024; RT-DETRv2: "
           "Improved Baseline with Bag-of-Freebies, 2024)")

#: small RT-DETRv2 for the digit scenes on a CPU: hidden 64, 60 queries (at most 5 digits a scene), 3 decoder layers,
#: 20 denoising queries; everything else (losses, matcher costs, focal alpha) transformers' = the paper's
_SMALL = dict(d_model=64, encoder_hidden_dim=64, encoder_ffn_dim=128, encoder_attention_heads=4, encoder_layers=1,
              decoder_ffn_dim=256, decoder_layers=3, decoder_attention_heads=4, decoder_n_points=4, num_queries=60,
              num_denoising=20, hidden_expansion=0.5, freeze_backbone_batch_norms=False)

RTDETR_RECIPES: dict[str, dict[str, Any]] = {
    "rtdetr_digit_scenes": dict(
        description="small-data RT-DETRv2 for the embedded digit scenes at 128 px (hidden 64, 60 queries, "
                    "3 decoder layers, 20 denoising queries; backbone from scratch, BatchNorm trained)",
        source="bettervit benchmarks/README.md, RT-DETR on the digit scenes (measured on 2 CPU cores)",
        detector=dict(detector="rt_detr", img_size=128, detections_per_img=50, rtdetr=_SMALL),
        published_batch=8,
        settings=dict(lr=4e-4, weight_decay=1e-4, layer_decay=1.0, sched="cosine", clip_grad=0.1, hflip=0.0,
                      lsj_scale=(0.8, 1.25)),
    ),
    "rtdetr_v2_r50": dict(
        description="RT-DETRv2-R50, 640 px (COCO 53.4 AP; RT-DETR-R50 53.1): 300 queries, hidden 256, 6 decoder "
                    "layers, 100 denoising queries, frozen backbone BatchNorm, AdamW 1e-4 (backbone 1e-5 there: "
                    "bettervit has no per-module LR, use --layer-decay), weight decay 1e-4, grad clip 0.1, EMA "
                    "0.9999, 72 epochs",
        source=_RTDETR.format("rtdetrv2_pytorch/configs/rtdetrv2/rtdetrv2_r50vd_6x_coco.yml"),
        detector=dict(detector="rt_detr", img_size=640, detections_per_img=300,
                      rtdetr=dict(d_model=256, encoder_hidden_dim=256, encoder_ffn_dim=1024, encoder_layers=1,
                                  decoder_layers=6, num_queries=300, num_denoising=100, decoder_n_points=4,
                                  freeze_backbone_batch_norms=True)),
        published_batch=16,
        settings=dict(lr=1e-4, weight_decay=1e-4, layer_decay=1.0, sched="constant", warmup_epochs=0.27,
                      clip_grad=0.1, ema_decay=0.9999, hflip=0.5, lsj_scale=(0.75, 1.25), epochs=72),
    ),
}


# --- conversions ---------------------------------------------------------------------------------------------
def to_hf_targets(targets: list[dict], size: tuple[int, int]) -> list[dict[str, Tensor]]:
    """torchvision targets (``boxes`` (N, 4) xyxy pixels on an input of ``size`` (H, W), ``labels`` (N,) in 1..K)
    -> transformers' (``class_labels`` (N,) in 0..K-1, ``boxes`` (N, 4) cx, cy, w, h in [0, 1])."""
    H, W = size
    scale = torch.tensor([W, H, W, H], dtype=torch.float32)
    out = []
    for t in targets:
        b = t["boxes"].float()
        cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                              b[:, 3] - b[:, 1]], -1)  # (N, 4)
        out.append({"class_labels": t["labels"].long() - 1, "boxes": cxcywh / scale.to(b.device)})
    return out


def from_hf_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """(..., 4) normalised cx, cy, w, h -> xyxy pixels on an input of ``size`` (H, W)."""
    H, W = size
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    return xyxy * torch.tensor([W, H, W, H], dtype=xyxy.dtype, device=xyxy.device)


def postprocess(logits: Tensor, pred_boxes: Tensor, size: tuple[int, int], top_k: int) -> list[dict[str, Tensor]]:
    """Per image the ``top_k`` (query, class) pairs by sigmoid score: ``boxes`` xyxy pixels on ``size``,
    ``labels`` in 1..K, ``scores``. ``logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalised cx, cy, w, h.
    A query may appear with several classes (transformers' ``post_process_object_detection`` with focal loss)."""
    B, Q, K = logits.shape
    k = min(top_k, Q * K)
    scores, idx = logits.sigmoid().flatten(1).topk(k, dim=1)  # (B, k) over the flattened (Q, K)
    labels, query = idx % K, idx // K
    boxes = from_hf_boxes(pred_boxes, size).gather(1, query.unsqueeze(-1).expand(B, k, 4))  # (B, k, 4)
    return [{"boxes": boxes[i], "labels": labels[i] + 1, "scores": scores[i]} for i in range(B)]


def group_losses(loss_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' weighted loss terms in five groups: the last decoder layer's ``loss_vfl``, ``loss_bbox``,
    ``loss_giou``, and the sums of the auxiliary (earlier layers, encoder proposals) and denoising terms. The
    groups add up to transformers' total loss."""
    out: dict[str, Tensor] = {}
    for k, v in loss_dict.items():
        group = "loss_dn" if "_dn_" in k else "loss_aux" if "_aux_" in k else k  # e.g. loss_vfl_aux_0
        out[group] = out[group] + v if group in out else v
    return out


# --- the model -----------------------------------------------------------------------------------------------
class RTDETR(nn.Module):
    """transformers' ``RTDetrV2ForObjectDetection`` behind bettervit's detector interface (see the module doc).

    ``forward(images, targets=None)``: ``images`` a list of float (3, S, S) tensors in [0, 1] (the data pipeline has
    resized and padded them; all the same size); normalised with the backbone's mean / std here.
    """

    def __init__(self, cfg: "DetectorConfig", hf_model: nn.Module, trunk_name: str, mean: list[float],
                 std: list[float]) -> None:
        super().__init__()
        self.config = cfg
        self.hf = hf_model
        self.trunk_name = trunk_name  # the trunk's module name inside self
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def trunk(self) -> nn.Module:
        return self.get_submodule(self.trunk_name)

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict] | None = None):
        x = torch.stack(list(images)) if not isinstance(images, Tensor) else images  # (B, 3, S, S)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        x = (x - self.mean) / self.std
        if self.training:
            if targets is None:
                raise ValueError("RT-DETR in training mode needs targets")
            out = self.hf(pixel_values=x, labels=to_hf_targets(targets, size))
            return group_losses(out.loss_dict)
        out = self.hf(pixel_values=x)
        return postprocess(out.logits, out.pred_boxes, size, self.config.detections_per_img)

    # layer-wise LR decay, weight decay and checkpointing: the trunk's, as Detector does
    def _trunk_params(self) -> dict[str, str]:
        prefix = self.trunk_name + "."
        return {n: n[len(prefix):] for n, _ in self.named_parameters() if n.startswith(prefix)}

    def num_layer_ids(self) -> int:
        return self.trunk.num_layer_ids()

    def param_layer_ids(self) -> dict[str, int]:
        """Trunk parameters keep the trunk's layer id; the pyramid, encoder and decoder the last id."""
        trunk, last = self._trunk_params(), self.num_layer_ids() - 1
        return {n: (min(self.trunk.layer_id(trunk[n]), last) if n in trunk else last)
                for n, _ in self.named_parameters()}

    def no_weight_decay(self) -> set[str]:
        skip = self.trunk.no_weight_decay() if hasattr(self.trunk, "no_weight_decay") else set()
        return {f"{self.trunk_name}.{s}" for s in skip}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


def _features(cfg: "DetectorConfig", pretrained: bool | str) -> tuple[nn.Module, str]:
    """bettervit's feature model of ``cfg.backbone`` at strides 8, 16, 32 through its timm entry, and the name of
    the trunk inside it. EVA-02 / EVA: the ``vitdet_`` pyramid (patch, window and global blocks of ``cfg``)."""
    import timm

    from .. import register_timm
    from ..factory import get_entry
    from .backbones import FPN_FAMILIES, VITDET_FAMILIES

    entry = get_entry(cfg.backbone)
    register_timm(TIMM_PREFIX)
    kw: dict[str, Any] = dict(cfg.backbone_overrides)
    if entry.family in VITDET_FAMILIES:
        depth = kw.get("depth", entry.config().depth)
        kw.update(img_size=cfg.img_size, patch_size=cfg.patch_size, window_size=cfg.window_size,
                  num_global=min(cfg.num_global, depth))
        name, trunk = TIMM_PREFIX + "vitdet_" + cfg.backbone, "model.backbone"
    elif entry.family in FPN_FAMILIES:
        if entry.family != "maxvit":
            kw.setdefault("img_size", cfg.img_size)
        name, trunk = TIMM_PREFIX + cfg.backbone, "model"
    else:
        raise ValueError(f"no RT-DETR backbone for family {entry.family!r} ({cfg.backbone}); expected one of "
                         f"{', '.join(VITDET_FAMILIES + FPN_FAMILIES)}")
    feats = timm.create_model(name, pretrained=pretrained or False, features_only=True, out_indices=3, **kw)
    if tuple(feats.feature_info.reduction()) != STRIDES:
        raise ValueError(f"{cfg.backbone}: RT-DETR needs feature levels at strides 8, 16, 32, got "
                         f"{feats.feature_info.reduction()}")
    return feats, trunk


class _StandIn(nn.Module):
    """What transformers' ``TimmBackbone`` builds while the model is constructed: only the real features'
    ``feature_info`` (channels, module names), no parameters; replaced by the real features right after."""

    def __init__(self, feature_info: Any) -> None:
        super().__init__()
        self.feature_info = feature_info


_STAND_IN: list[Any] = []  # the feature_info the stand-in entry returns next (set around one model build)
_STAND_IN_NAME = TIMM_PREFIX + "rtdetr_stand_in"


def _register_stand_in() -> None:
    """A timm entry for :class:`_StandIn` (once per process)."""
    import timm

    if timm.is_model(_STAND_IN_NAME):
        return

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if not _STAND_IN:
            raise ValueError(f"{_STAND_IN_NAME} is built only inside bettervit.detection.rtdetr.build_rtdetr")
        return _StandIn(_STAND_IN[-1])

    from ..integrations import bettervit_timm  # the module timm files bettervit's entries under

    entry.__name__ = entry.__qualname__ = _STAND_IN_NAME
    entry.__module__ = bettervit_timm.__name__
    timm.models.register_model(entry)


def _hf_config(cfg: "DetectorConfig", feats: nn.Module) -> Any:
    from transformers import RTDetrV2Config, TimmBackboneConfig

    fields = dict(cfg.rtdetr)
    hidden = fields.get("encoder_hidden_dim", 256)
    fields.setdefault("decoder_in_channels", [hidden] * len(STRIDES))
    return RTDetrV2Config(
        backbone_config=TimmBackboneConfig(backbone=_STAND_IN_NAME, out_indices=list(feats.out_indices)),
        encoder_in_channels=list(feats.feature_info.channels()), feat_strides=list(STRIDES),
        num_labels=cfg.num_classes, **fields)


def build_rtdetr(cfg: "DetectorConfig", pretrained: bool | str = False) -> RTDETR:
    """The RT-DETRv2 detector ``cfg`` describes (``cfg.detector == "rt_detr"``); ``pretrained`` (anything
    ``create_model`` takes) goes into the backbone trunk.

    The backbone is built once, by bettervit; transformers' ``TimmBackbone`` is constructed around a parameter-free
    stand-in with the same ``feature_info`` and gets the real features afterwards, so transformers' weight init never
    sees the trunk (it would reset BatchNorm statistics and re-draw linear layers)."""
    try:
        from transformers import RTDetrV2ForObjectDetection
        from transformers.models.rt_detr_v2.modeling_rt_detr_v2 import replace_batch_norm
    except ImportError:
        raise ImportError("--detector rt_detr needs transformers and timm: "
                          "pip install 'bettervit[detect,integrations]'") from None
    from .backbones import image_norm

    if cfg.masks:
        raise ValueError("rt_detr detects boxes only; build it with masks=False")
    feats, trunk = _features(cfg, pretrained)
    _register_stand_in()
    _STAND_IN.append(feats.feature_info)
    try:
        hf = RTDetrV2ForObjectDetection(_hf_config(cfg, feats))
    finally:
        _STAND_IN.pop()
    tb = hf.model.backbone.model  # transformers' TimmBackbone
    tb._backbone = feats
    if hf.config.freeze_backbone_batch_norms:
        with torch.no_grad():
            replace_batch_norm(feats)
    mean, std = image_norm(feats)
    return RTDETR(cfg, hf, f"hf.model.backbone.model._backbone.{trunk}", mean, std)
