"""MIM pretraining of EVA-02 (``bettervit pretrain --method mim``; Fang et al. 2023): the student regresses a frozen
teacher's features (``--teacher NAME``, its weights from ``--teacher-checkpoint``) at masked patches; the model is
``bettervit.pretrain.mim.MIM`` (the teacher is never saved)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from ...data import DataBundle
from .common import PretrainTask, model_overrides

if TYPE_CHECKING:
    from ..config import RunConfig


def build_mim_model(cfg: "RunConfig", img_size: int) -> nn.Module:
    """The MIM model of ``cfg.model`` (an EVA-02) and ``cfg.teacher`` at ``img_size``; ``--init`` loads into the
    student encoder."""
    from ...pretrain.mim import build_mim

    if not cfg.teacher:
        raise ValueError("--method mim needs --teacher NAME (a bettervit model; its weights via --teacher-checkpoint)")
    overrides = model_overrides(cfg, frames=False)
    if cfg.mask_ratio is not None:
        overrides["mask_ratio"] = cfg.mask_ratio
    model = build_mim(cfg.model, cfg.teacher, teacher_checkpoint=cfg.teacher_checkpoint, img_size=img_size, **overrides)
    if cfg.init:
        from ... import weights

        weights.load_into(model.encoder, weights.load_state_dict(weights.resolve(cfg.init)), source=cfg.init)
    return model


class MIMTask(PretrainTask):
    name = "mim"
    epochs_key, lr_key = "mim_epochs", "mim_lr"

    def build_model(self, cfg: "RunConfig", data: DataBundle) -> nn.Module:
        return build_mim_model(cfg, data.img_size)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, _ = self.aug.train_batch(*batch)
        return model(x).loss
