"""Cascade R-CNN's box heads (Cai & Vasconcelos 2018, "Cascade R-CNN: Delving into High Quality Object Detection") on
torchvision's ``RoIHeads``, with the semantics of detectron2's ``CascadeROIHeads``
(``detectron2/modeling/roi_heads/cascade_rcnn.py``):

- stages k = 0, 1, 2 train at IoU 0.5 / 0.6 / 0.7 with box-coder weights (10, 10, 5, 5) / (20, 20, 10, 10) /
  (30, 30, 15, 15); regression is class-agnostic (4 deltas per RoI);
- stage 0 sees the RPN's proposals with the ground truth appended and the usual balanced sample (RoIHeads'
  ``select_training_samples``); stage k + 1 sees stage k's regressed boxes, detached, clipped to the image (and in
  training without empty boxes), every box labelled by its best ground truth at stage k + 1's IoU, no sampling;
- the losses of the stages are added, and the gradient each stage sends into the pooled features is scaled by
  1 / (number of stages) -- the same as averaging the stage losses for the shared features while each head still
  learns at full rate;
- at test time each stage runs on the previous stage's boxes (none filtered, so the stages stay aligned), the class
  probabilities are averaged over the stages, the boxes are the last stage's, and the detections then go through
  torchvision's usual score threshold, per-class NMS and top-k;
- the mask head trains on stage 0's foreground samples and predicts on the final (last-stage) boxes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return grad * ctx.scale, None


class AgnosticBoxPredictor(nn.Module):
    """Class scores (K + 1, background first) and one class-agnostic box delta (4) per RoI."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)  # (R, C)
        return self.cls_score(x), self.bbox_pred(x)


def agnostic_box_loss(logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` for class-agnostic deltas: cross-entropy over all RoIs, smooth L1
    (beta 1/9) over the foreground ones, summed and divided by the RoI count."""
    cls = F.cross_entropy(logits, labels)
    pos = torch.where(labels > 0)[0]
    box = F.smooth_l1_loss(deltas[pos], targets[pos], beta=1 / 9, reduction="sum") / max(labels.numel(), 1)
    return cls, box


class CascadeRoIHeads(RoIHeads):
    """``RoIHeads`` with one box head + predictor + box coder + matcher per cascade stage.

    ``box_heads`` / ``box_predictors``: one per stage (predictors class-agnostic). The inherited ``proposal_matcher``,
    ``fg_bg_sampler`` and ``box_coder`` serve stage 0 (IoU ``ious[0]``, weights ``weights[0]``); the mask parts are
    RoIHeads' own.
    """

    def __init__(self, box_roi_pool: nn.Module, box_heads: list[nn.Module], box_predictors: list[nn.Module], *,
                 ious: tuple[float, ...], weights: tuple[tuple[float, ...], ...], **kw) -> None:
        if not len(box_heads) == len(box_predictors) == len(ious) == len(weights):
            raise ValueError("cascade: one box head, predictor, IoU and coder weight per stage")
        if kw.get("fg_iou_thresh") != ious[0]:
            raise ValueError(f"cascade: stage 0's IoU {ious[0]} must be RoIHeads' fg_iou_thresh")
        super().__init__(box_roi_pool, nn.ModuleList(box_heads), nn.ModuleList(box_predictors),
                         bbox_reg_weights=tuple(weights[0]), **kw)
        self.num_stages = len(ious)
        self.stage_ious = tuple(float(i) for i in ious)
        self.box_coders = [det_utils.BoxCoder(tuple(w)) for w in weights]
        self.box_coder = self.box_coders[0]
        self.stage_matchers = [None] + [det_utils.Matcher(i, i, allow_low_quality_matches=False) for i in ious[1:]]

    # -- one stage ------------------------------------------------------------------------------------------------
    def _run_stage(self, k: int, features: dict[str, Tensor], proposals: list[Tensor],
                   image_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        x = self.box_roi_pool(features, proposals, image_shapes)  # (R, C, 7, 7)
        x = _ScaleGradient.apply(x, 1.0 / self.num_stages)
        return self.box_predictor[k](self.box_head[k](x))

    def _next_proposals(self, k: int, deltas: Tensor, proposals: list[Tensor],
                        image_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """Stage k's regressed boxes, detached and clipped: stage k + 1's proposals (empty ones dropped in training)."""
        boxes = self.box_coders[k].decode(deltas.detach(), proposals).reshape(-1, 4)  # (R, 4)
        out = []
        for b, shape in zip(boxes.split([len(p) for p in proposals]), image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)
            if self.training:
                b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
            out.append(b)
        return out

    @torch.no_grad()
    def _match(self, k: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Labels (0 = background) and regression targets (stage k's coder) for every proposal, at stage k's IoU."""
        labels, matched = [], []
        for p, t in zip(proposals, targets):
            gt = t["boxes"].to(p.dtype)
            if gt.numel() == 0:
                labels.append(torch.zeros(len(p), dtype=torch.int64, device=p.device))
                matched.append(torch.zeros_like(p))
                continue
            idx = self.stage_matchers[k](box_ops.box_iou(gt, p))
            lab = t["labels"][idx.clamp(min=0)].to(torch.int64)
            lab[idx < 0] = 0
            labels.append(lab)
            matched.append(gt[idx.clamp(min=0)])
        targets_k = self.box_coders[k].encode(matched, proposals)
        return torch.cat(labels), torch.cat(targets_k)

    # -- training -------------------------------------------------------------------------------------------------
    def _train_boxes(self, features, proposals, image_shapes, targets):
        proposals, matched_idxs, labels, reg_targets = self.select_training_samples(proposals, targets)
        stage0 = (proposals, matched_idxs, labels)
        losses: dict[str, Tensor] = {}
        props, lab, reg = proposals, torch.cat(labels), torch.cat(reg_targets)
        deltas = torch.empty(0)
        for k in range(self.num_stages):
            if k > 0:
                props = self._next_proposals(k - 1, deltas, props, image_shapes)
                lab, reg = self._match(k, props, targets)
            logits, deltas = self._run_stage(k, features, props, image_shapes)
            cls, box = agnostic_box_loss(logits, deltas, lab, reg)
            losses[f"loss_classifier_stage{k}"] = cls
            losses[f"loss_box_reg_stage{k}"] = box
        return stage0, losses

    # -- inference ------------------------------------------------------------------------------------------------
    def _test_boxes(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        probs = []
        props, deltas = proposals, torch.empty(0)
        for k in range(self.num_stages):
            if k > 0:
                props = self._next_proposals(k - 1, deltas, props, image_shapes)
            logits, deltas = self._run_stage(k, features, props, image_shapes)
            probs.append(F.softmax(logits, -1))
        scores = torch.stack(probs).mean(0)  # (R, K + 1): the stages' probabilities averaged
        boxes = self.box_coders[-1].decode(deltas, props).reshape(-1, 4)  # the last stage's boxes
        return self.select_detections(boxes, scores, [len(p) for p in props], image_shapes)

    def select_detections(self, boxes: Tensor, scores: Tensor, counts: list[int],
                          image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """torchvision's ``postprocess_detections`` for one box per RoI shared by all classes: drop background,
        score threshold, tiny boxes, per-class NMS, top ``detections_per_img``."""
        out = []
        num_classes = scores.shape[1]
        for b, s, shape in zip(boxes.split(counts), scores.split(counts), image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)
            b = b[:, None].expand(-1, num_classes - 1, 4).reshape(-1, 4)  # (R * K, 4)
            lab = torch.arange(1, num_classes, device=s.device).repeat(len(s))  # (R * K,)
            s = s[:, 1:].reshape(-1)
            keep = torch.where(s > self.score_thresh)[0]
            b, s, lab = b[keep], s[keep], lab[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s, lab = b[keep], s[keep], lab[keep]
            keep = box_ops.batched_nms(b, s, lab, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": b[keep], "labels": lab[keep], "scores": s[keep]})
        return out

    # -- masks ----------------------------------------------------------------------------------------------------
    def _masks(self, features, image_shapes, targets, stage0, result) -> dict[str, Tensor]:
        if self.training:
            proposals, matched_idxs, labels = stage0
            pos = [torch.where(lab > 0)[0] for lab in labels]
            boxes = [p[i] for p, i in zip(proposals, pos)]
            pos_matched = [m[i] for m, i in zip(matched_idxs, pos)]
        else:
            boxes = [r["boxes"] for r in result]
        x = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
        if self.training:
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            return {"loss_mask": maskrcnn_loss(x, boxes, gt_masks, gt_labels, pos_matched)}
        for probs, r in zip(maskrcnn_inference(x, [r["labels"] for r in result]), result):
            r["masks"] = probs
        return {}

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None):
        """As ``RoIHeads.forward``: (detections, {}) in eval, ([], losses) in training."""
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training")
            stage0, losses = self._train_boxes(features, proposals, image_shapes, targets)
            result: list[dict[str, Tensor]] = []
        else:
            stage0, losses = None, {}
            result = self._test_boxes(features, proposals, image_shapes)
        if self.has_mask():
            losses.update(self._masks(features, image_shapes, targets, stage0, result))
        return result, losses
