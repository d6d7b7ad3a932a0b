"""Write bettervit/pretrained_cfgs.json: timm's pretrained configs (the facts a timm user reads from
``model.pretrained_cfg``) for every released tag of the architectures bettervit registers.

Run in the reference environment (see README, "Parity"):  .ref/bin/python scripts/gen_pretrained_cfgs.py
"""
import json
import sys
from pathlib import Path

import timm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEEP = ("hf_hub_id", "architecture", "tag", "num_classes", "input_size", "fixed_input_size", "interpolation",
        "crop_pct", "crop_mode", "mean", "std", "pool_size", "first_conv", "classifier", "min_input_size",
        "test_input_size", "test_crop_pct", "license")


def main() -> None:
    archs = sorted({n for pat in ("maxvit_*_tf_*", "hiera_*_224", "eva02_*_patch14_*", "eva_giant_*", "sam2_hiera_*", "hiera_*_16x224")
                    for n in timm.list_models(pat)})
    table: dict[str, dict] = {}
    for arch in archs:
        default = timm.models.get_pretrained_cfg(arch).to_dict()
        tags = [n for n in timm.list_pretrained(arch + ".*")]
        entries = {}
        for full in tags:
            cfg = timm.models.get_pretrained_cfg(full).to_dict()
            entries[full.split(".", 1)[1]] = {k: cfg.get(k) for k in KEEP if cfg.get(k) is not None}
        table[arch] = {"default_tag": default.get("tag"), "tags": entries}
    out = ROOT / "bettervit" / "pretrained_cfgs.json"
    out.write_text(json.dumps({"timm_version": timm.__version__, "models": table}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(table)} architectures)")


if __name__ == "__main__":
    main()
