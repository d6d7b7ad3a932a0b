"""Everything a run is made of, in one dataclass: the CLI fills it, the run directory stores it as YAML."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class RunConfig:
    task: str = "train"  # "train" (supervised) or "pretrain"
    model: str = ""
    data: str = "digits"  # "digits" or a folder with train/ and val/ class subfolders
    img_size: int | None = None  # None: the model's default size
    num_frames: int | None = None  # video models: frames per clip; None: the model's default
    epochs: int | None = None  # None: see bettervit.train.engine.resolve_defaults
    batch_size: int | None = None  # per process; None: 64, smaller for tiny training sets
    output: str | None = None  # run directory; default runs/<model>
    init: str | None = None  # anything create_model(pretrained=...) accepts
    recipe: str | None = None  # a named preset from bettervit/recipes (its values replace the defaults)
    recipe_lr: float | None = None  # set by a recipe: the published peak rate for recipe_batch images per step
    recipe_batch: int | None = None
    labels_per_class: int | None = None  # keep this many labelled train images per class (stratified, seeded)
    linear_probe: bool = False  # freeze the encoder, train BatchNorm(affine=False) + Linear on its pooled features
    # optimisation (None: see resolve_defaults)
    lr: float | None = None
    weight_decay: float | None = None
    layer_decay: float | None = None  # < 1: layer-wise LR decay (fine-tuning); 1: off
    sched: str = "cosine"  # cosine | linear | step | constant (all after a linear warmup)
    warmup_epochs: float | None = None
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0  # max gradient norm; 0 = off
    accum_steps: int = 1
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999
    amp: str = "none"  # none | bf16 | fp16
    compile: bool = False
    grad_checkpointing: bool = False
    drop_path: float | None = None  # None: the model's default
    # augmentation (None: the data's default; see bettervit.data.augment)
    label_smoothing: float | None = None
    crop_scale: tuple[float, float] | None = None
    hflip: float | None = None
    randaugment: tuple[int, int] | None = None
    no_randaugment: bool = False
    mixup: float | None = None
    cutmix: float | None = None
    # pretraining
    method: str | None = None  # mae | mim
    mask_ratio: float | None = None  # None: the MAE / MIM model's own
    norm_pix_loss: bool | None = None  # MAE: per-patch normalised pixel targets; None: the model's
    teacher: str | None = None  # MIM
    teacher_checkpoint: str | None = None  # MIM
    eval_every: int | None = None  # evaluate every N epochs and at the last; None: about 20 evaluations per run
    # machinery
    seed: int = 0
    workers: int = 2
    threads: int | None = None  # torch CPU threads; None = torch's default
    device: str = "auto"
    dist_mode: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard)
    progress: bool = True
    stop_after: int | None = field(default=None, metadata={"help": "stop after this many epochs (tests)"})

    def validate(self) -> None:
        """One-line ValueError for a value no run can use."""
        for name in ("epochs", "batch_size", "accum_steps", "labels_per_class", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"--num-frames must be >= 1, got {self.num_frames}")
        if self.img_size is not None and self.img_size < 8:
            raise ValueError(f"--img-size must be >= 8, got {self.img_size}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs", "clip_grad", "workers"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        for name in ("label_smoothing", "hflip", "mixup", "cutmix", "drop_path"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"--crop-scale must be MIN,MAX with 0 < MIN <= MAX <= 1, got {self.crop_scale}")
        if self.mask_ratio is not None and not 0 < self.mask_ratio < 1:
            raise ValueError(f"--mask-ratio must be in (0, 1), got {self.mask_ratio}")
        from .optim import SCHEDULES

        if self.sched not in SCHEDULES:
            raise ValueError(f"--sched must be one of {', '.join(SCHEDULES)}, got {self.sched}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"--amp must be none, bf16 or fp16, got {self.amp}")
        if self.dist_mode not in ("ddp", "fsdp"):
            raise ValueError(f"--dist must be ddp or fsdp, got {self.dist_mode}")
        if self.task == "pretrain" and self.method not in ("mae", "mim"):
            raise ValueError(f"--method must be mae or mim, got {self.method}")
        if self.task == "pretrain" and (self.labels_per_class or self.linear_probe):
            raise ValueError("--labels-per-class and --linear-probe are for train, not pretrain")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"--stop-after must be >= 1, got {self.stop_after}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)
