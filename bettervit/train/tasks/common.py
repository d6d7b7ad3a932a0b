"""What the image and video tasks (classify, probe, MAE, MIM) share: the data (``bettervit.data``: the digits, an
image folder, moving digits or a clip folder, at the model's input size), the augmentation on the device
(``DeviceAugment``) and their part of the run header."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...data import DataBundle, build_data
from ...data.augment import AugmentConfig, DeviceAugment
from ..config import DEFAULTS, default_img_size, default_num_frames
from .base import Task

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..distributed import DistInfo

log = logging.getLogger("bettervit.train")


def build_image_data(cfg: "RunConfig") -> DataBundle:
    """The run's data at ``--img-size`` (default: the model's), clips of ``--num-frames`` for video models, the
    ``--labels-per-class`` subset if asked."""
    img_size = cfg.img_size or default_img_size(cfg.model)
    num_frames = default_num_frames(cfg.model)
    if cfg.num_frames is not None:
        if not num_frames:
            raise ValueError(f"--num-frames is for video models; {cfg.model} is an image model")
        num_frames = cfg.num_frames
    data = build_data(cfg.data, img_size, num_frames=num_frames)
    if cfg.labels_per_class:
        data = data.with_labels_per_class(cfg.labels_per_class, cfg.seed)
    return data


def augment_config(cfg: "RunConfig", data: DataBundle, mixing: bool = True) -> AugmentConfig:
    """The data's default augmentation with the options given on top. Without ``mixing`` (pretraining) and for
    clips (crop and flip only, see ``DeviceAugment``): no mixup, cutmix or RandAugment."""
    a = AugmentConfig.for_data(data.name)
    for name in ("crop_scale", "hflip", "mixup", "cutmix", "label_smoothing", "randaugment"):
        if getattr(cfg, name) is not None:
            setattr(a, name, getattr(cfg, name))
    if cfg.no_randaugment:
        a.randaugment = None
    if not mixing or data.num_frames:
        a.mixup = a.cutmix = 0.0
        a.randaugment = None
    return a


def model_overrides(cfg: "RunConfig", frames: bool = True) -> dict[str, Any]:
    """``create_model`` overrides the options ask for: ``--drop-path`` and (``frames``) ``--num-frames``."""
    out: dict[str, Any] = {"drop_path_rate": cfg.drop_path} if cfg.drop_path is not None else {}
    if frames and cfg.num_frames is not None:
        out["num_frames"] = cfg.num_frames
    return out


class ImageTask(Task):
    """A task on ``DataBundle`` batches ``(uint8 images (B, 3, H, W) or clips (B, 3, T, H, W), int64 labels)``,
    augmented on the device by ``self.aug`` (built in ``setup``)."""

    #: mixup / cutmix / RandAugment allowed (supervised tasks)
    mixing: bool = True
    #: the task learns from labels (False: pretraining, which also takes images without labels)
    needs_labels: bool = True

    def build_data(self, cfg: "RunConfig", info: "DistInfo") -> DataBundle:
        data = build_image_data(cfg)
        if self.needs_labels and not data.labeled:
            raise ValueError(f"--data {cfg.data} gives images without class labels (for `bettervit pretrain`, or "
                             f"`bettervit detect train`); train needs 'digits' or a folder of <class>/ subfolders")
        return data

    def setup(self, model: nn.Module, data: DataBundle, device: torch.device) -> None:
        self.aug = DeviceAugment(augment_config(self.cfg, data, self.mixing), data.img_size, data.mean, data.std,
                                 data.num_classes).to(device)

    def config_module(self, model: nn.Module) -> nn.Module:
        """The module whose ``config`` config.yaml records as ``model_config``."""
        return model

    def describe(self, model: nn.Module, data: DataBundle) -> dict[str, Any]:
        out = super().describe(model, data)
        out["data"]["img_size"] = data.img_size
        return {"model_config": plain(getattr(self.config_module(model), "config", None)), **out}

    def data_summary(self, data: DataBundle) -> str:
        what = f"clips of {data.num_frames} frames" if data.num_frames else "images"
        return f"{data.size('train')} train / {data.size('val')} val {what}, {data.img_size} px"


class PretrainTask(ImageTask):
    """Self-supervised pretraining (MAE, MIM): no labels used, no evaluation, no best.pt, no layer decay."""

    mixing = False
    needs_labels = False
    #: DEFAULTS keys of the method's epochs and rate
    epochs_key = lr_key = ""

    def validate(self, cfg: "RunConfig") -> None:
        if cfg.labels_per_class or cfg.linear_probe:
            raise ValueError("--labels-per-class and --linear-probe are for train, not pretrain")

    def resolve_defaults(self, cfg: "RunConfig", n_train: int, world: int = 1) -> None:
        super().resolve_defaults(cfg, n_train, world)
        if cfg.layer_decay != 1.0:
            log.warning("--layer-decay is for fine-tuning; pretraining uses none (1)")
            cfg.layer_decay = 1.0  # what the optimizer uses, so config.yaml says so

    def defaults(self, cfg: "RunConfig", n_train: int) -> dict[str, Any]:
        return {"epochs": DEFAULTS[self.epochs_key], "lr": DEFAULTS[self.lr_key],
                "weight_decay": DEFAULTS["weight_decay"], "layer_decay": 1.0}


def plain(obj: Any) -> Any:
    """``obj`` as plain Python types for YAML: dataclasses and containers recursively, anything else as str."""
    import dataclasses

    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return str(obj)
