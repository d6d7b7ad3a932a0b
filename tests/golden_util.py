"""Reading golden fixtures (made by scripts/golden_*.py in the reference environment) in the project's tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from fill import fill_state_dict, golden_input  # tests/golden/fill.py (on pytest's pythonpath, see pyproject)

GOLDEN = Path(__file__).resolve().parent / "golden"


def read_fixture(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]], dict]:
    """-> (reference outputs, reference checkpoint {key: shape}, metadata)."""
    with safe_open(str(path), framework="pt") as f:
        outputs = {k: f.get_tensor(k) for k in f.keys()}
        md = f.metadata()
    shapes = {k: tuple(s) for k, s in json.loads(md.pop("shapes")).items()}
    return outputs, shapes, {k: json.loads(v) for k, v in md.items()}


def reference_checkpoint(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The checkpoint the reference model ran with, rebuilt from the fill rule."""
    return fill_state_dict(shapes)


__all__ = ["read_fixture", "reference_checkpoint", "golden_input", "GOLDEN"]
