"""A run's configuration, its defaults and how the sources merge; the one place for each.

- ``RunConfig``: everything a run is made of, in one dataclass; the CLI fills it, the run directory stores it (the
  resolved config the loop used) in ``config.yaml``.
- ``DEFAULTS``: the values ``resolve_defaults`` hands out for options left at None (the CLI's help reads them here).
- ``merge_config``: defaults < recipe < saved run (on resume) < options given on the command line.
- ``resolve_defaults``: fills the options still None once the training set is known; a task (``train/tasks``)
  supplies its own values through ``Task.defaults``.
- ``default_img_size`` / ``default_num_frames``: the model's build size, read from its registered config.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tasks.base import Task

log = logging.getLogger("bettervit.train")

#: The defaults ``resolve_defaults`` and the tasks hand out (chosen on the digits few-label benchmark,
#: benchmarks/README.md); docs/training.md tabulates them.
DEFAULTS: dict[str, Any] = {
    "batch_size": 64,
    "small_data": 1000,  # fewer training images than this: small batches, at least min_train_steps steps
    "small_batch_divisor": 6,  # small data: the power of two near N / 6 ...
    "min_batch_size": 8,  # ... but at least 8
    "min_train_steps": 600,
    "epochs": 10,  # supervised training on a training set of at least small_data images
    "scratch_lr": 1e-3,
    "finetune_lr": 1e-3,
    "finetune_layer_decay": 0.75,
    "weight_decay": 0.05,
    "probe_lr": 3e-2,
    "probe_weight_decay": 0.0,
    "mae_epochs": 60,
    "mae_lr": 1.5e-3,
    "mim_epochs": 40,
    "mim_lr": 1.5e-3,
    "warmup_share": 0.05,  # warmup: this share of the epochs ...
    "min_warmup_epochs": 1.0,  # ... but at least one epoch
    "evals_per_run": 20,  # --eval-every: about this many evaluations per run
}


@dataclass
class RunConfig:
    task: str = "train"  # "train" (supervised), "pretrain" (--method), or a registered task's name (train/tasks)
    model: str = ""
    data: str = "digits"  # "digits" or a folder with train/ and val/ class subfolders
    img_size: int | None = None  # None: the model's default size
    num_frames: int | None = None  # video models: frames per clip; None: the model's default
    epochs: int | None = None  # None: see resolve_defaults
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
    # detection (bettervit detect train; bettervit/detection/task.py)
    detector: str | None = None  # mask_rcnn | cascade_mask_rcnn
    det_recipe: str | None = None  # a preset of bettervit/detection/recipes.py (heads, anchors, image size, settings)
    lsj_scale: tuple[float, float] | None = None  # large-scale jitter range (ViTDet: 0.1, 2.0)
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

    def run_dir(self) -> Path:
        """The run directory: ``output``, by default ``runs/<model>``."""
        return Path(self.output or f"runs/{self.model}")


def merge_config(options: dict[str, Any], resume: bool = False) -> RunConfig:
    """The run's config: ``RunConfig`` defaults < the recipe ``options["recipe"]`` names < the saved config of the
    run being resumed (``config.yaml`` in its run directory; it already holds the recipe) < ``options``.

    ``options`` are the RunConfig fields given explicitly (e.g. on the command line; leave out what was not given).
    Bad input (unknown recipe, a run directory that holds no run or a run of another model): one-line ValueError.
    """
    model = options.get("model")
    base = RunConfig()
    if options.get("recipe") and not resume:
        from .recipes import recipe_overrides

        base = RunConfig.from_dict({**base.to_dict(), **recipe_overrides(options["recipe"], model)})
    if resume:
        out = RunConfig(model=model or "", output=options.get("output")).run_dir()
        saved = _saved_config(out / "config.yaml")
        saved.pop("stop_after", None)  # a test's simulated kill is not part of the run
        if saved.get("model") != model:
            raise ValueError(f"cannot resume: {out} is a run of {saved.get('model')}, not {model}")
        base = RunConfig.from_dict(saved)
    return RunConfig.from_dict({**base.to_dict(), **options})


def _saved_config(f: Path) -> dict:
    import yaml

    if not f.is_file():
        raise ValueError(f"cannot resume: {f} not found")
    try:
        saved = yaml.safe_load(f.read_text())["config"]
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot resume: {f} is not a bettervit run config ({type(e).__name__})") from e
    if not isinstance(saved, dict):
        raise ValueError(f"cannot resume: {f} is not a bettervit run config (config is {type(saved).__name__})")
    return saved


def resolve_defaults(cfg: RunConfig, n_train: int, world: int = 1, task: "Task | None" = None) -> None:
    """Fill every option left at None with a default that suits the task and the size of the training set.

    Tiny training sets (few labels) get small batches; a recipe's rate is scaled linearly from its published batch
    to this run's (batch size x accumulation steps x ``world`` processes); then the task's own values
    (``task.defaults``: epochs, rate, weight decay, layer decay; by default the task ``cfg`` names) fill what is
    still None; warmup and evaluation spacing follow the epochs. Values given are never replaced. The values are
    ``DEFAULTS``, documented in docs/training.md.
    """
    d = DEFAULTS
    if cfg.batch_size is None:
        small = n_train < d["small_data"]
        guess = 2 ** int(math.log2(max(1, n_train // d["small_batch_divisor"])))
        cfg.batch_size = max(d["min_batch_size"], min(d["batch_size"], guess)) if small else d["batch_size"]
    if cfg.lr is None and cfg.recipe_lr is not None:  # a recipe's rate, published for recipe_batch images per step
        cfg.lr = cfg.recipe_lr * cfg.batch_size * cfg.accum_steps * world / (cfg.recipe_batch or 256)
    if task is None:
        from .tasks import create_task

        task = create_task(cfg)
    for name, value in task.defaults(cfg, n_train).items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    if cfg.warmup_epochs is None:
        cfg.warmup_epochs = max(d["min_warmup_epochs"], round(d["warmup_share"] * cfg.epochs, 2))
    if cfg.eval_every is None:
        cfg.eval_every = max(1, cfg.epochs // d["evals_per_run"])


def supervised_epochs(n_train: int, batch_size: int) -> int:
    """Supervised runs: ``DEFAULTS["epochs"]``; a training set under ``small_data`` images trains long enough for
    ``min_train_steps`` optimizer steps (and at least ``epochs``)."""
    if n_train >= DEFAULTS["small_data"]:
        return DEFAULTS["epochs"]
    steps_per_epoch = max(1, n_train // batch_size)
    return max(DEFAULTS["epochs"], math.ceil(DEFAULTS["min_train_steps"] / steps_per_epoch))


# ---------------------------------------------------------------------------------------------------------------
# Model facts the run needs (the registered model's own config)
# ---------------------------------------------------------------------------------------------------------------
def default_img_size(model_name: str) -> int:
    """The input side ``model_name`` is built for (``bettervit.models.facts.default_input``); an unknown name is a
    one-line ValueError suggesting close names."""
    from ..models.facts import default_input

    return default_input(model_name)[0]


def default_num_frames(model_name: str) -> int:
    """Frames per clip a video model is built for; 0 for image models (``bettervit.models.facts.default_input``)."""
    from ..models.facts import default_input

    return default_input(model_name)[1]
