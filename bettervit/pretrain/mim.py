"""EVA-02 masked image modeling (Fang et al. 2023): regress a frozen teacher's patch features at masked positions.

    x --patch embed--> tokens --(masked ones := mask_token)--> student blocks --fc_norm--> lm_head --> pred (B, N, D_t)
    x --frozen teacher--> patch features (B, N_t, D_t) --(resize to the student's grid if N_t != N)--> target
    loss = -cos(pred, target), averaged over the masked patches only

The teacher is any frozen module that yields patch features: a bettervit model (built from a name + checkpoint;
EVA-02 used the EVA-CLIP vision tower) or a module you pass in, e.g. an EVA-CLIP vision tower returning
(B, L, D) tokens or a (B, D, h, w) map. Masks come from ``masking.batch_block_mask`` (True = masked, ~40%).

Checkpoint layout: the student is ``encoder.`` (a headless bettervit EVA-02, its ``fc_norm`` serves as the final
token norm), plus ``mask_token`` and ``lm_head.``; the teacher is not saved. ``create_model(name, pretrained=path)``
loads such a checkpoint into a classifier (the encoder keys are picked out; fc_norm carries over, as timm does for
the official MIM checkpoints).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import batch_block_mask

log = logging.getLogger(__name__)


def _fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size a bettervit model accepts, or None if it takes any (EVA-02, MaxViT at multiples)."""
    from ..models.hiera import Hiera

    if isinstance(model, Hiera):
        s = model.config.img_size
        return (s, s) if isinstance(s, int) else tuple(s)
    return None


class MIMOutput(NamedTuple):
    loss: Tensor  # scalar, -mean cosine similarity over masked patches (in [-1, 1], lower is better)
    pred: Tensor  # (M, D_t) student predictions at the M masked patches of the batch
    target: Tensor  # (M, D_t) teacher features there
    mask: Tensor  # (B, h*w) bool, True = masked


def teacher_patch_features(teacher: nn.Module, x: Tensor, num_prefix_tokens: int | None = None) -> Tensor:
    """Patch features (B, D, h, w) from a teacher.

    bettervit models (anything with ``forward_features`` and ``num_prefix_tokens``) give their patch tokens; other
    modules are called as ``teacher(x)`` and may return a (B, D, h, w) map or (B, L, D) tokens, of which the first
    ``num_prefix_tokens`` (default: whatever is left over beyond the largest grid with the image's aspect ratio) are
    dropped.
    """
    size = _fixed_input_size(teacher)
    if size is not None and tuple(x.shape[-2:]) != size:  # e.g. a Hiera teacher: only its own size runs
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if hasattr(teacher, "forward_features") and hasattr(teacher, "config"):  # a bettervit model
        out, npt = teacher.forward_features(x), getattr(teacher, "num_prefix_tokens", 0)
    else:
        out, npt = teacher(x), num_prefix_tokens
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim == 4:
        return out
    if out.ndim != 3:
        raise ValueError(f"teacher must return (B, L, D) tokens or a (B, D, h, w) map, got shape {tuple(out.shape)}")
    B, L, D = out.shape
    aspect = x.shape[-1] / x.shape[-2]
    for p in range(9) if npt is None else [npt]:  # the fewest prefix tokens leaving an h x w grid of the image's aspect
        h = max(1, round(math.sqrt((L - p) / aspect)))
        w = (L - p) // h
        if h * w == L - p and abs(w / h - aspect) <= 0.5 * aspect:
            npt = p
            break
    else:
        raise ValueError(f"cannot read a patch grid from teacher tokens of shape {tuple(out.shape)}")
    return out[:, npt:].transpose(1, 2).reshape(B, D, h, w)  # (B, D, h, w)


class MIM(nn.Module):
    """Student + mask token + lm_head, regressing a frozen teacher. ``forward(x, mask=None) -> MIMOutput``."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        teacher_dim: int,
        mask_ratio: float = 0.4,
        teacher_prefix_tokens: int | None = None,
        teacher_forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(student, "embed") or getattr(student.config, "num_classes", 0) != 0:
            raise ValueError("student must be a headless bettervit EVA-02 (num_classes=0)")
        self.encoder = student
        dim = student.config.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.lm_head = nn.Linear(dim, teacher_dim)
        nn.init.trunc_normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)
        self.mask_ratio = mask_ratio
        self.teacher_prefix_tokens = teacher_prefix_tokens
        self.teacher_forward = teacher_forward
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: never trained, never saved (moved along in _apply)

    def _apply(self, fn, recurse=True):
        self.teacher._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> MIM:
        super().train(mode)
        self.teacher.eval()  # always frozen, dropout/BN off
        return self

    @torch.no_grad()
    def target(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Teacher patch features at the student's grid, (B, h*w, D_t)."""
        if self.teacher_forward is not None:
            feats = self.teacher_forward(self.teacher, x)
        else:
            feats = teacher_patch_features(self.teacher, x, self.teacher_prefix_tokens)
        if tuple(feats.shape[-2:]) != tuple(grid):
            feats = F.interpolate(feats.float(), size=grid, mode="bilinear", align_corners=False)
        return feats.flatten(2).transpose(1, 2)  # (B, h*w, D_t)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MIMOutput:
        """Images (B, C, H, W) -> MIMOutput. ``mask`` (B, h*w) bool, True = masked; default: fresh block masks."""
        p = self.encoder.config.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        if mask is None:
            mask = batch_block_mask(x.shape[0], grid, self.mask_ratio, device=x.device)
        tokens = self.encoder.forward_features(x, mask=mask, mask_token=self.mask_token)  # (B, 1 + N, C)
        tokens = self.encoder.fc_norm(tokens[:, self.encoder.num_prefix_tokens:])  # (B, N, C)
        pred = self.lm_head(tokens[mask])  # (M, D_t)
        target = self.target(x, grid)[mask].to(pred.dtype)  # (M, D_t)
        loss = -F.cosine_similarity(pred.float(), target.float(), dim=-1).mean()
        return MIMOutput(loss, pred, target, mask)


def _teacher_by_name(name: str, checkpoint: str | None, img_size: int | None) -> nn.Module:
    """A headless bettervit teacher at the student's size if it runs there, else at its own (e.g. Hiera, whose
    input is resized to its size in ``teacher_patch_features``). MAE / MIM checkpoints load into the plain encoder."""
    from .. import create_model
    from ..factory import get_entry

    cfg = get_entry(name).config()
    own = getattr(cfg, "img_size", None)
    multiple = getattr(cfg, "patch_stride", 1) * getattr(cfg, "mask_unit_size", 1)
    if img_size is not None and own is not None and hasattr(cfg, "mask_unit_size") and img_size % multiple:
        img_size = None  # Hiera cannot run at the student's size: keep its own
    return create_model(name, pretrained=checkpoint or False, num_classes=0,
                        **({"img_size": img_size} if img_size else {}))


def build_mim(
    student: str,
    teacher: str | nn.Module,
    teacher_checkpoint: str | None = None,
    img_size: int | None = None,
    **kw: Any,
) -> MIM:
    """An EVA-02 MIM model: ``student`` a bettervit EVA-02 name (built headless), ``teacher`` a bettervit name (built
    from ``teacher_checkpoint``: a path or hub id) or a frozen module yielding patch features.

    Keyword options: ``mask_ratio`` (0.4), ``teacher_dim`` (else read from the teacher / one dry run),
    ``teacher_prefix_tokens``, ``teacher_forward(teacher, x) -> (B, D, h, w)``; the rest override the student's
    config (e.g. ``drop_path_rate=0.1``).
    """
    from .. import create_model

    mim_kw = {k: kw.pop(k) for k in ("mask_ratio", "teacher_prefix_tokens", "teacher_forward") if k in kw}
    teacher_dim = kw.pop("teacher_dim", None)
    kw.setdefault("num_classes", 0)
    if kw["num_classes"] != 0:
        raise ValueError("the MIM student is headless: num_classes must be 0")
    net = create_model(student, img_size=img_size, **kw)
    if isinstance(teacher, str):
        if teacher_checkpoint is None:
            log.warning("MIM teacher %s has no checkpoint: it is randomly initialised", teacher)
        teacher = _teacher_by_name(teacher, teacher_checkpoint, img_size)
    elif teacher_checkpoint is not None:
        raise ValueError("teacher_checkpoint is only used with a teacher given by name")
    if teacher_dim is None:
        teacher_dim = getattr(teacher, "num_features", None) or getattr(getattr(teacher, "config", None), "embed_dim", None)
    if teacher_dim is None:  # one dry run at the student's size
        size = net.config.img_size
        x = torch.zeros(1, net.config.in_chans, size, size, device=next(teacher.parameters()).device)
        with torch.no_grad():
            fn = mim_kw.get("teacher_forward")
            feats = fn(teacher, x) if fn else teacher_patch_features(teacher, x, mim_kw.get("teacher_prefix_tokens"))
        teacher_dim = feats.shape[1]
    return MIM(net, teacher, teacher_dim, **mim_kw)
