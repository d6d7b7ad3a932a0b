"""The task interface: everything the training loop (``bettervit/train/engine.py``) asks of a task.

The loop owns what is the same for every task: data order per (seed, epoch, rank), AdamW and the schedule
(layer-wise LR decay through the model's ``param_layer_ids`` when it has them), AMP, gradient accumulation and
clipping, EMA, DDP / FSDP, atomic ``best.pt`` / ``last.pt`` checkpoints and exact resume, ``metrics.jsonl`` and
``curves.png``, the progress bar and NaN detection. A task owns the rest: its data and augmentation, its model, the
loss of a batch, its evaluation, what its checkpoints hold and what it draws. Batches are opaque to the loop: it
gets them from ``Data.batches`` and hands them back to the task (``to_device``, ``batch_len``, ``loss``).

The loop calls, in order (every rank, unless noted):

1. ``Task(cfg)``; ``validate(cfg)`` (before anything is written);
2. ``build_data(cfg, info)``; ``resolve_defaults(cfg, n_train, world)``; ``build_model(cfg, data)``;
3. ``grad_checkpoint_target(model)`` (``--grad-checkpointing``); ``setup(model, data, device)`` once the model is
   on its device; ``describe(model, data)`` and ``data_summary(data)`` for the run header (rank 0);
4. per epoch, per batch: ``to_device(batch, device)``, ``batch_len(batch)``, ``loss(model, batch)`` inside autocast;
   then every ``eval_every`` epochs and at the last ``evaluate(model, data, info, cfg, out_dir)``;
   ``after_epoch(plain, epoch, out_dir, is_main)``; ``checkpoint_weights(module)`` and ``checkpoint_meta()`` for
   the checkpoints; ``epoch_summary(row)`` for the log line (rank 0);
5. ``after_run(plain, out_dir, is_main)``.

Adding a task is one file with a subclass of :class:`Task` and one line in ``bettervit/train/tasks/__init__.py``
(or ``register_task`` at run time); docs/training.md, "Adding a task", says the same for readers.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..distributed import DistInfo


class Data(Protocol):
    """What the loop reads of a task's data (``bettervit.data.DataBundle`` is one)."""

    name: str  # shown in the log and config.yaml
    class_names: list[str] | None  # stored in every checkpoint's meta (None: the task has no classes)
    skipped: int  # unreadable files left out (logged)

    def size(self, split: str) -> int:
        """Samples in ``split`` ("train", "val")."""

    def indices(self, split: str, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                batch_size: int = 1) -> list[int]:
        """This rank's sample order for one epoch. With ``shuffle`` (training): a permutation fixed by (seed, epoch),
        whole batches only, the same count on every rank; without: each sample once over all ranks."""

    def batches(self, split: str, indices: list[int], batch_size: int, workers: int = 0) -> Iterator[Any]:
        """Batches of the samples ``indices``, in that order: anything the task's ``to_device`` accepts."""

    def preprocess_info(self) -> dict:
        """How to prepare a new input as training did (checkpoint meta ``preprocess``): plain Python types."""


class Task:
    """One training task. Subclasses set ``name`` and implement ``build_data``, ``build_model`` and ``loss``; every
    other method has a default that suits a task without evaluation, figures or extra checkpoint content."""

    #: the registered name ("classify", "probe", "mae", "mim", ...)
    name: ClassVar[str] = ""
    #: key of ``evaluate``'s result whose increase writes best.pt ("val_top1"); None: no best.pt
    best_metric: ClassVar[str | None] = None
    #: key of the best value so far in the metrics row and in last.pt's resume state. "best_top1" is the name every
    #: run before tasks existed wrote, so their checkpoints resume; a task with another best_metric names its own.
    best_key: ClassVar[str] = "best_top1"
    #: True when ``checkpoint_weights`` returns the module's own state dict, which a resume loads back; False (e.g.
    #: the linear probe's folded classifier): last.pt stores the raw state dict beside it for resuming
    weights_are_raw: ClassVar[bool] = True
    #: glob patterns of the files the task writes into the run directory (``--overwrite`` removes them)
    run_files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: "RunConfig") -> None:
        self.cfg = cfg

    # --- before anything is written -----------------------------------------------------------------------------
    def validate(self, cfg: "RunConfig") -> None:
        """Task-specific checks of ``cfg``: a one-line ValueError naming the option and what was expected."""

    def defaults(self, cfg: "RunConfig", n_train: int) -> dict[str, Any]:
        """The task's values for RunConfig fields left at None (``epochs``, ``lr``, ``weight_decay``,
        ``layer_decay``, or any field of its own), given the training set size and the batch size already in
        ``cfg``. Read them from ``bettervit.train.config.DEFAULTS``; only None fields are filled."""
        return {}

    def resolve_defaults(self, cfg: "RunConfig", n_train: int, world: int = 1) -> None:
        """Fill every None option of ``cfg`` (see ``bettervit.train.config.resolve_defaults``); ``world`` is the
        number of processes (a recipe's rate scales with the total batch)."""
        from ..config import resolve_defaults

        resolve_defaults(cfg, n_train, world, task=self)

    def build_data(self, cfg: "RunConfig", info: "DistInfo") -> Data:
        """Both splits (see :class:`Data`). Bad input: one-line ValueError."""
        raise NotImplementedError

    def build_model(self, cfg: "RunConfig", data: Data) -> nn.Module:
        """The plain module the loop trains, averages (EMA), wraps (DDP / FSDP / compile) and checkpoints, on the
        CPU. ``--init`` weights are the task's to load. Bad input: one-line ValueError."""
        raise NotImplementedError

    def grad_checkpoint_target(self, model: nn.Module) -> nn.Module:
        """The module whose ``set_grad_checkpointing(True)`` ``--grad-checkpointing`` calls."""
        return model

    # --- once the model is on its device ------------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Data, device: torch.device) -> None:
        """Build what lives on the device beside the model (e.g. the augmentation); every rank."""

    def describe(self, model: nn.Module, data: Data) -> dict[str, Any]:
        """Entries of config.yaml beside the config and the checkpoint meta (plain Python types)."""
        return {"data": {"name": data.name, "train_images": data.size("train"), "val_images": data.size("val"),
                         "skipped_files": data.skipped}}

    def data_summary(self, data: Data) -> str:
        """The run header's log line says ``<task> <model> on <data name> (<this>) -> <run dir>``."""
        return f"{data.size('train')} train / {data.size('val')} val"

    # --- per batch (training) ---------------------------------------------------------------------------------
    def to_device(self, batch: Any, device: torch.device) -> Any:
        """A batch from ``Data.batches`` moved to ``device``; by default a tuple of tensors."""
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def batch_len(self, batch: Any) -> int:
        """Samples (images, clips) in the batch: img/s and the epoch's mean loss count them."""
        return len(batch[0])

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The training objective of a batch (a scalar), called inside autocast with the (wrapped) model in train
        mode. Training-time augmentation belongs here or in ``to_device``; the RNG is seeded per (seed, epoch,
        rank) before each epoch, so random choices here are part of exact resume."""
        raise NotImplementedError

    # --- per epoch ----------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, data: Data, info: "DistInfo", cfg: "RunConfig", out_dir: Path) -> dict:
        """Metrics merged into the epoch's metrics.jsonl row (numbers; ``best_metric`` among them if set), summed
        over all ranks (every rank calls it; under FSDP each forward is collective). ``model`` is the plain or EMA
        module, not wrapped. Rank 0 may write files into ``out_dir`` (list them in ``run_files``)."""
        return {}

    def epoch_summary(self, row: dict) -> str:
        """Metrics of the row for the epoch's log line (after ``train_loss``); "" for none."""
        return ""

    def after_epoch(self, model: nn.Module, epoch: int, out_dir: Path, is_main: bool) -> None:
        """After the epoch's evaluation, before its checkpoints (``epoch`` counts from 0): e.g. figures. Every rank
        calls it (a forward under FSDP is collective); only ``is_main`` writes."""

    def after_run(self, model: nn.Module, out_dir: Path, is_main: bool) -> None:
        """After the last epoch of this process (also when ``--stop-after`` ends it early)."""

    # --- checkpoints --------------------------------------------------------------------------------------------
    def checkpoint_weights(self, module: nn.Module) -> dict[str, Tensor]:
        """The state dict saved as ``model`` in best.pt / last.pt, from the unwrapped module (plain or EMA): what
        ``create_model(..., pretrained=path)`` or ``--init`` reads. Every rank calls it (FSDP gathers)."""
        from ..checkpoint import clean_state_dict

        return clean_state_dict(module.state_dict())

    def checkpoint_meta(self) -> dict[str, Any]:
        """Extra ``meta`` entries of every checkpoint (plain Python types), beside ``model_name``, ``task``,
        ``method``, ``class_names``, ``preprocess`` and ``config``."""
        return {}
