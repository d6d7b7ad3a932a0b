"""Shared by the scripts/golden_*.py generators. Runs in the *reference* environment (timm, hiera-transformer),
never in the project's. See tests/golden/fill.py for the deterministic weight rule and README "Parity".

    python3 -m venv .ref && .ref/bin/pip install torch torchvision timm einops \
        && .ref/bin/pip install --no-deps hiera-transformer
    .ref/bin/python scripts/golden_maxvit.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(GOLDEN))
from fill import fill_state_dict, golden_input  # noqa: E402


def fill_module(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Load the rule's values into every state-dict entry of ``module``; return {key: shape}."""
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(fill_state_dict(shapes), strict=True)
    return shapes


def save_fixture(path: Path, outputs: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], **meta) -> None:
    """One fixture: reference outputs (fp32), the reference checkpoint's key names/shapes, and metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    md = {"shapes": json.dumps({k: list(s) for k, s in shapes.items()})}
    md.update({k: json.dumps(v) for k, v in meta.items()})
    save_file({k: v.detach().float().contiguous() for k, v in outputs.items()}, str(path), metadata=md)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


__all__ = ["fill_module", "save_fixture", "golden_input", "GOLDEN", "ROOT"]
