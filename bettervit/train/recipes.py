"""Named fine-tuning presets: YAML files in ``bettervit/recipes``, each holding a paper's published
hyper-parameters and citing its source.

A recipe file has ``name``, ``description``, ``models`` (a shell pattern of the models it was made for),
``published_batch`` (images per optimizer step in the source) and ``settings`` (RunConfig fields). Its ``lr`` is the
published peak rate for ``published_batch``; the run scales it linearly to its own batch (the MAE / Goyal et al.
rule) unless ``--lr`` is given. Precedence: built-in defaults < recipe < options given on the command line.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
log = logging.getLogger(__name__)


def list_recipes() -> dict[str, dict]:
    """{name: recipe dict} for every YAML file in the package's recipes folder."""
    import yaml

    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(RECIPE_DIR.glob("*.yaml"))}


def load_recipe(name: str) -> dict:
    recipes = list_recipes()
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(recipes)} (see --recipe list)")
    return recipes[name]


def recipe_overrides(name: str, model: str | None = None) -> dict:
    """RunConfig fields the recipe sets (its ``lr`` as ``recipe_lr`` + ``recipe_batch``); a one-line ValueError for
    a field RunConfig does not have."""
    from .config import RunConfig

    r = load_recipe(name)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    out: dict = {}
    for k, v in (r.get("settings") or {}).items():
        if k == "lr":
            out["recipe_lr"], out["recipe_batch"] = float(v), int(r["published_batch"])
        elif k not in fields:
            raise ValueError(f"recipe {name}: unknown setting {k!r}")
        else:
            out[k] = tuple(v) if isinstance(v, list) else v
    if model and r.get("models") and not fnmatch.fnmatch(model, r["models"]):
        log.warning("recipe %s was made for %s, not %s", name, r["models"], model)
    return out
