"""MAE pretraining of Hiera (``bettervit pretrain --method mae``; He et al. 2022, Ryali et al. 2023): the model is
a ``MaskedAutoencoderHiera`` (e.g. ``mae_hiera_nano``), the loss its masked-pixel regression; after the first epoch
and about ten more the run directory gets the paper's reconstruction figure (``mae_epochNNN.png``), and
``reconstructions.png`` at the end (:mod:`.mae_figures`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from ...data import DataBundle
from .common import PretrainTask, model_overrides
from .mae_figures import is_figure_epoch, save_mae_figure

if TYPE_CHECKING:
    import torch

    from ..config import RunConfig

log = logging.getLogger("bettervit.train")


def build_mae_model(cfg: "RunConfig", img_size: int) -> nn.Module:
    """``cfg.model`` (an MAE model) at ``img_size`` with the options' ``--mask-ratio`` / ``--norm-pix-loss`` /
    ``--drop-path`` / ``--num-frames``; ``--init`` continues from an MAE checkpoint or loads an encoder-only one
    (``load_mae_init``: the decoder then starts fresh)."""
    from ... import create_model
    from ...pretrain.mae import MaskedAutoencoderHiera

    overrides = model_overrides(cfg)
    for name in ("mask_ratio", "norm_pix_loss"):
        if getattr(cfg, name) is not None:
            overrides[name] = getattr(cfg, name)
    model = create_model(cfg.model, img_size=img_size, **overrides)
    if not isinstance(model, MaskedAutoencoderHiera):
        raise ValueError(f"--method mae needs an MAE model (e.g. mae_hiera_nano), got {cfg.model}")
    if cfg.init:
        from ... import weights
        from ...pretrain.mae import load_mae_init

        fresh = load_mae_init(model, weights.load_state_dict(weights.resolve(cfg.init)), source=cfg.init)
        if fresh:
            log.info("%s holds the encoder only: %d MAE tensors (fusion heads, decoder%s) start fresh", cfg.init,
                     len(fresh), ", encoder norm" if any(k.startswith("encoder_norm.") for k in fresh) else "")
    return model


class MAETask(PretrainTask):
    name = "mae"
    epochs_key, lr_key = "mae_epochs", "mae_lr"
    run_files = ("reconstructions.png", "mae_epoch*.png")

    def build_model(self, cfg: "RunConfig", data: DataBundle) -> nn.Module:
        return build_mae_model(cfg, data.img_size)

    def setup(self, model: nn.Module, data: DataBundle, device: "torch.device") -> None:
        super().setup(model, data, device)
        # the figure's fixed validation images (video: two clips, a few frames each)
        n = min(2 if data.num_frames else 8, data.size("val"))
        x, _ = next(data.batches("val", list(range(n)), n))
        self.figure_batch = self.aug.eval_batch(x.to(device))
        self.mean, self.std = data.mean, data.std

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, _ = self.aug.train_batch(*batch)
        return model(x, mask_ratio=self.cfg.mask_ratio).loss

    def _figure(self, model: nn.Module, path: Path, is_main: bool) -> None:
        save_mae_figure(model, self.figure_batch, path, self.mean, self.std, self.cfg.mask_ratio, write=is_main)

    def after_epoch(self, model: nn.Module, epoch: int, out_dir: Path, is_main: bool) -> None:
        if is_figure_epoch(epoch, self.cfg.epochs):
            self._figure(model, out_dir / f"mae_epoch{epoch + 1:03d}.png", is_main)

    def after_run(self, model: nn.Module, out_dir: Path, is_main: bool) -> None:
        self._figure(model, out_dir / "reconstructions.png", is_main)
