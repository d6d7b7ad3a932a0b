"""Linear probing (``bettervit train --linear-probe``): the ``--init`` encoder frozen, BatchNorm (no affine) and a
linear classifier trained on its pooled features, as the MAE paper (He et al. 2022, appendix A.2); the model is
``bettervit.train.probe.LinearProbe``. Its checkpoint is the plain classifier it amounts to (BatchNorm folded)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ...data import DataBundle
from ..checkpoint import unwrap_model
from ..config import DEFAULTS, supervised_epochs
from ..probe import LinearProbe
from .classify import ClassifyTask, build_classifier

if TYPE_CHECKING:
    from ..config import RunConfig


class LinearProbeTask(ClassifyTask):
    name = "probe"
    weights_are_raw = False  # checkpoints hold the folded classifier; last.pt keeps the probe's own weights too

    def defaults(self, cfg: "RunConfig", n_train: int) -> dict[str, Any]:
        return {"epochs": supervised_epochs(n_train, cfg.batch_size), "lr": DEFAULTS["probe_lr"],
                "weight_decay": DEFAULTS["probe_weight_decay"], "layer_decay": 1.0}

    def build_model(self, cfg: "RunConfig", data: DataBundle) -> nn.Module:
        return LinearProbe(build_classifier(cfg, data.num_classes, data.img_size), data.num_classes)

    def grad_checkpoint_target(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def config_module(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def checkpoint_weights(self, module: nn.Module) -> dict[str, Tensor]:
        return unwrap_model(module).classifier_state_dict()
