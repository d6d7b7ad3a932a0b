"""Named detection presets: the detector's shape (heads, anchors, RoI sampling, image size) and the training
settings of a published recipe, each citing its source; ``digit_scenes`` is this project's small-data default.

A recipe has ``description``, ``source``, ``detector`` (:class:`~bettervit.detection.models.DetectorConfig`
fields), ``published_batch`` and ``settings`` (RunConfig fields; ``lr`` is the published peak rate for
``published_batch`` images per step and is scaled linearly to the run's batch unless ``--lr`` is given).
Precedence, as for classification recipes: built-in defaults < recipe < options given on the command line.

What the published recipes share (detectron2 ``projects/ViTDet/configs/COCO/*.py``, Li et al. 2022): 1024 x 1024
inputs with large-scale jitter (scale 0.1-2.0, fixed-size crop) and flips, batch 64, AdamW (betas 0.9 / 0.999,
weight decay 0.1), layer-wise LR decay 0.7 (ViT-B) / 0.8 (L) / 0.9 (H), drop path 0.1 / 0.4 / 0.5, a step schedule
(x0.1 twice, late in training) after a short linear warmup (250 iterations), the simple feature pyramid with
LayerNorm, an RPN with 2 convs, a 4conv1fc box head and a 4-conv mask head with LayerNorm. The step points differ
here: bettervit's ``step`` schedule decays at 1/3 and 2/3 of the steps after warmup (detectron2: at 88.9% and 96.3%
of 100 epochs).
"""
from __future__ import annotations

from typing import Any

_VITDET = "detectron2 projects/ViTDet/configs/COCO/{}.py (Li et al., Exploring Plain Vision Transformer Backbones " \
          "for Object Detection, ECCV 2022)"
_VITDET_SETTINGS = dict(weight_decay=0.1, sched="step", warmup_epochs=0.14, lsj_scale=(0.1, 2.0), hflip=0.5,
                        epochs=100)
_COCO_HEADS: dict[str, Any] = dict(img_size=1024, norm="ln")

RECIPES: dict[str, dict[str, Any]] = {
    "digit_scenes": dict(
        description="small-data default: task-sized heads and RoI sampling for the embedded digit scenes at 128 px",
        source="bettervit benchmarks/README.md, Detection (measured on 2 CPU cores)",
        detector=dict(img_size=128, fpn_channels=64, conv_dim=64, fc_dim=256, mask_dim=64, box_convs=4,
                      mask_convs=4, anchor_scale=4.0, roi_batch=64, rpn_batch=128, rpn_pre_nms=(600, 300),
                      rpn_post_nms=(300, 300), detections_per_img=50, norm="ln"),
        published_batch=8,
        settings=dict(lr=1e-3, weight_decay=0.05, layer_decay=1.0, sched="cosine", hflip=0.0,
                      lsj_scale=(0.8, 1.25)),
    ),
    "vitdet_mask_rcnn_b": dict(
        description="ViTDet Mask R-CNN, ViT-B (COCO 51.6 box / 45.9 mask AP)",
        source=_VITDET.format("mask_rcnn_vitdet_b_100ep"),
        detector=dict(_COCO_HEADS, detector="mask_rcnn"), published_batch=64,
        settings=dict(_VITDET_SETTINGS, lr=1e-4, layer_decay=0.7, drop_path=0.1),
    ),
    "vitdet_cascade_b": dict(
        description="ViTDet Cascade Mask R-CNN, ViT-B (COCO 54.0 / 46.7)",
        source=_VITDET.format("cascade_mask_rcnn_vitdet_b_100ep"),
        detector=dict(_COCO_HEADS, detector="cascade_mask_rcnn"), published_batch=64,
        settings=dict(_VITDET_SETTINGS, lr=1e-4, layer_decay=0.7, drop_path=0.1),
    ),
    "vitdet_cascade_l": dict(
        description="ViTDet Cascade Mask R-CNN, ViT-L (COCO 57.6 / 50.0)",
        source=_VITDET.format("cascade_mask_rcnn_vitdet_l_100ep"),
        detector=dict(_COCO_HEADS, detector="cascade_mask_rcnn"), published_batch=64,
        settings=dict(_VITDET_SETTINGS, lr=1e-4, layer_decay=0.8, drop_path=0.4),
    ),
    "vitdet_cascade_h": dict(
        description="ViTDet Cascade Mask R-CNN, ViT-H, 75 epochs",
        source=_VITDET.format("cascade_mask_rcnn_vitdet_h_75ep"),
        detector=dict(_COCO_HEADS, detector="cascade_mask_rcnn"), published_batch=64,
        settings=dict(_VITDET_SETTINGS, lr=1e-4, layer_decay=0.9, drop_path=0.5, epochs=75),
    ),
    "eva02_cascade_b": dict(
        description="EVA-02 ViTDet Cascade Mask R-CNN, B (COCO 55.5 / 47.1): patch 16, window 16, 4 global blocks",
        source="baaivision/EVA, EVA-02/det (projects/ViTDet configs for EVA-02; Fang et al., EVA-02: A Visual "
               "Representation for Neon Genesis, 2023)",
        detector=dict(_COCO_HEADS, detector="cascade_mask_rcnn", patch_size=16, window_size=16, num_global=4),
        published_batch=64,
        settings=dict(_VITDET_SETTINGS, lr=5e-5, layer_decay=0.7, drop_path=0.1),
    ),
}


def _add_rtdetr() -> None:
    from .rtdetr import RTDETR_RECIPES  # RT-DETR's presets live beside its model

    RECIPES.update(RTDETR_RECIPES)


_add_rtdetr()


def list_detection_recipes() -> dict[str, dict[str, Any]]:
    return dict(RECIPES)


def get_recipe(name: str) -> dict[str, Any]:
    """The recipe ``name``; a one-line ValueError naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown detection recipe {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[name]


def default_recipe(data: str | None, detector: str | None = None) -> str:
    """``digit_scenes`` for the embedded scenes; ``vitdet_mask_rcnn_b``'s COCO-sized heads for a COCO folder
    (``--detector rt_detr``: ``rtdetr_digit_scenes`` / ``rtdetr_v2_r50``)."""
    embedded = not data or data == "digits" or str(data).startswith("digit-scenes")
    if detector == "rt_detr":
        return "rtdetr_digit_scenes" if embedded else "rtdetr_v2_r50"
    return "digit_scenes" if embedded else "vitdet_mask_rcnn_b"


def recipe_settings(name: str) -> dict[str, Any]:
    """RunConfig fields the recipe sets (its ``lr`` as ``recipe_lr`` + ``recipe_batch``, as train/recipes.py)."""
    r = get_recipe(name)
    out = {k: v for k, v in r["settings"].items() if k != "lr"}
    if "lr" in r["settings"]:
        out["recipe_lr"], out["recipe_batch"] = float(r["settings"]["lr"]), int(r["published_batch"])
    return out
