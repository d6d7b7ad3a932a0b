"""The training tasks, registered by name; the loop (``train/engine.py``) runs any of them.

``TASKS`` maps a name to ``"module:Class"``, imported when first asked for (so a task's heavy dependencies load
only for its runs). Adding a task is one file with a :class:`~bettervit.train.tasks.base.Task` subclass and one
line here, or ``register_task(name, cls)`` at run time.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .base import Data, Task

if TYPE_CHECKING:
    from ..config import RunConfig

TASKS: dict[str, str | type[Task]] = {
    "classify": "bettervit.train.tasks.classify:ClassifyTask",
    "probe": "bettervit.train.tasks.linear_probe:LinearProbeTask",
    "mae": "bettervit.train.tasks.mae:MAETask",
    "mim": "bettervit.train.tasks.mim:MIMTask",
    "detect": "bettervit.detection.task:DetectionTask",
}

__all__ = ["TASKS", "Data", "Task", "all_run_files", "create_task", "get_task", "register_task", "task_name"]


def register_task(name: str, cls: type[Task] | str) -> None:
    """Make ``cls`` (a Task subclass, or ``"module:Class"``) the task ``name``; an existing name is replaced."""
    TASKS[name] = cls


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``; a one-line ValueError naming the registered ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(sorted(TASKS))}")
    entry = TASKS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = TASKS[name] = getattr(importlib.import_module(module), attr)
    return entry


def task_name(cfg: "RunConfig") -> str:
    """The registered task a run config asks for: ``train`` is ``classify`` (``probe`` with ``--linear-probe``),
    ``pretrain`` its ``--method`` (``mae``, ``mim``); any other ``cfg.task`` names a task itself (e.g. ``detect``)."""
    if cfg.task == "train":
        return "probe" if cfg.linear_probe else "classify"
    if cfg.task == "pretrain":
        if not cfg.method:
            raise ValueError("pretrain needs --method (mae or mim)")
        return cfg.method
    return cfg.task


def all_run_files() -> tuple[str, ...]:
    """The ``run_files`` patterns of every registered task: ``--overwrite`` replaces a run of any task."""
    return tuple(dict.fromkeys(f for name in sorted(TASKS) for f in get_task(name).run_files))


def create_task(cfg: "RunConfig") -> Task:
    """The task object for ``cfg`` (see :func:`task_name`)."""
    return get_task(task_name(cfg))(cfg)
