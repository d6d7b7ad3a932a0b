"""Golden fixtures for HieraDet, SAM 2's Hiera image encoder (run in the reference environment, see
scripts/golden_common.py).

Written to tests/golden/hieradet/:
  timm_sam2_hiera_tiny.safetensors  timm's sam2_hiera_tiny (num_classes=10) filled by the rule. Outputs at run-time
                                    sizes 256x256, 256x384, 224x224, 192x320, 96x96 (the last three pad stage 3/4
                                    windows): logits, pre-logits and the final map's first 16 channels;
                                    forward_intermediates at 256x384 for several indices / formats / coarse=False;
                                    features_only (out_indices (1, 3)); a model pruned to stages (0, 1).
                                    Feature maps keep their first 4 channels.
  timm_sam2_hiera_base_plus.safetensors
                                    base_plus (14x14 background embedding) filled by the rule: pooled features and
                                    the 4 stage maps (8 channels) at 128x192.
  timm_variants.json                every sam2_hiera_* of timm: key shapes, parameter count, GMACs at its
                                    pretrained input size (torch's FlopCounterMode, batch 1), feature_info, window
                                    size per block, num_classes, head_hidden_size.
  official_sam2.1_hiera_tiny.safetensors
                                    the official SAM 2 trunk (sam2.modeling.backbones.hieradet.Hiera, SAM 2.1 tiny
                                    config) filled by the rule under the full SAM 2 checkpoint's names
                                    ("image_encoder.trunk.*"): its 4 stage maps (4 channels) at 256x256 and 256x384.
                                    Needs the SAM 2 sources: SAM2_SRC=<dir holding sam2/modeling/...> (the official
                                    repository, github.com/facebookresearch/sam2; only three files are imported).
    SAM2_SRC=/path/to/sam2 .ref/bin/python scripts/golden_hieradet.py
"""
import importlib.util
import json
import os
import sys
import types

import timm
import torch
from timm.models._features import FeatureGetterNet
from torch.utils.flop_counter import FlopCounterMode

from golden_common import GOLDEN, fill_module, golden_input, save_fixture

OUT = GOLDEN / "hieradet"
VARIANTS = ("sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large")
SIZES = ((256, 256), (256, 384), (224, 224), (192, 320), (96, 96))
REF = f"timm {timm.__version__}"


def _s(hw):
    return f"{hw[0]}x{hw[1]}"


def tiny_fixture() -> None:
    model = timm.create_model("sam2_hiera_tiny", num_classes=10).eval()
    shapes = fill_module(model)
    sd = model.state_dict()
    out = {}
    for hw in SIZES:
        x = golden_input((1, 3, *hw))
        feats = model.forward_features(x)  # (1, h, w, 768) NHWC
        out[f"logits_{_s(hw)}"] = model(x)
        out[f"pre_logits_{_s(hw)}"] = model.forward_head(feats, pre_logits=True)
        out[f"features_{_s(hw)}"] = feats[..., :16]
    x = golden_input((1, 3, 256, 384))
    # forward_intermediates: (key, kwargs)
    calls = {
        "all": dict(),
        "last2": dict(indices=2),
        "pick02": dict(indices=[0, 2]),
        "neg1_nhwc": dict(indices=[-1], output_fmt="NHWC"),
        "pick02_nostop": dict(indices=[0, 2], stop_early=False),
        "blocks_4_6": dict(indices=[4, 6], coarse=False),
    }
    all_maps = model.forward_intermediates(x, intermediates_only=True)
    for key, kw in calls.items():
        final, maps = model.forward_intermediates(x, **kw)
        out[f"fi_{key}_final"] = final[..., :16]
        if key.startswith("pick02"):  # the same maps as levels 0 and 2 of "all": stored once
            assert all(torch.equal(m, all_maps[i]) for m, i in zip(maps, (0, 2)))
            continue
        for j, m in enumerate(maps):
            out[f"fi_{key}_{j}"] = m[:, :4] if kw.get("output_fmt", "NCHW") == "NCHW" else m[..., :4]
    # features_only with timm's wrapper (prunes blocks after stage 3 and the head)
    fmodel = timm.create_model("sam2_hiera_tiny", num_classes=10)
    fmodel.load_state_dict(sd)
    feat = FeatureGetterNet(fmodel, out_indices=(1, 3)).eval()
    for j, m in enumerate(feat(x)):
        out[f"features_only_13_{j}"] = m[:, :4]
    # a model pruned to stages (0, 1): its forward pools stage 1 (no norm, no classifier)
    pruned = timm.create_model("sam2_hiera_tiny", num_classes=10)
    pruned.load_state_dict(sd)
    take = pruned.prune_intermediate_layers((0, 1))
    pruned.eval()
    out["pruned_01"] = pruned(x)
    save_fixture(
        OUT / "timm_sam2_hiera_tiny.safetensors", out, shapes, reference=REF, sizes=[list(s) for s in SIZES],
        fi_calls=calls, pruned_take=list(take), pruned_num_features=pruned.num_features,
        pruned_blocks=len(pruned.blocks), feature_info=model.feature_info,
        group_matcher=model.group_matcher(), no_weight_decay=list(model.no_weight_decay()),
    )


def base_plus_fixture() -> None:
    model = timm.create_model("sam2_hiera_base_plus").eval()
    shapes = fill_module(model)
    x = golden_input((1, 3, 128, 192))
    final, maps = model.forward_intermediates(x)
    out = {"pooled": model.forward_head(final), **{f"stage{j}": m[:, :8] for j, m in enumerate(maps)}}
    save_fixture(OUT / "timm_sam2_hiera_base_plus.safetensors", out, shapes, reference=REF, input=[1, 3, 128, 192])


def variants_json() -> None:
    info = {}
    for name in VARIANTS:
        with torch.device("meta"):  # shapes and FLOPs only
            model = timm.create_model(name).eval()
        with FlopCounterMode(display=False) as fc:
            model(torch.empty(1, *model.pretrained_cfg["input_size"], device="meta"))
        info[name] = dict(
            input_size=list(model.pretrained_cfg["input_size"]),
            gmacs=fc.get_total_flops() / 2 / 1e9,
            shapes={k: list(v.shape) for k, v in model.state_dict().items()},
            params=sum(p.numel() for p in model.parameters()),
            feature_info=model.feature_info,
            windows=[b.window_size[0] for b in model.blocks],
            q_pool_blocks=list(model.q_pool_blocks),
            num_classes=model.num_classes,
            head_hidden_size=model.head_hidden_size,
            num_features=model.num_features,
        )
        del model
    (OUT / "timm_variants.json").write_text(json.dumps(dict(reference=REF, variants=info)))
    print("wrote timm_variants.json")


def _official_trunk_cls():
    """sam2.modeling.backbones.hieradet.Hiera from the SAM 2 sources, without installing SAM 2 (its package
    __init__ needs hydra, its checkpoint reader iopath: neither is used here)."""
    src = os.environ.get("SAM2_SRC")
    if not src:
        raise SystemExit("set SAM2_SRC to a directory holding the SAM 2 sources (sam2/modeling/backbones/...)")
    for pkg in ("sam2", "sam2.modeling", "sam2.modeling.backbones", "sam2.utils"):
        mod = types.ModuleType(pkg)
        mod.__path__ = [os.path.join(src, *pkg.split("."))]
        sys.modules[pkg] = mod
    misc = types.ModuleType("sam2.utils.misc")
    misc.mask_to_box = None
    sys.modules["sam2.utils.misc"] = misc
    iopath = types.ModuleType("iopath.common.file_io")
    iopath.g_pathmgr = None
    sys.modules.update({"iopath": types.ModuleType("iopath"), "iopath.common": types.ModuleType("iopath.common"),
                        "iopath.common.file_io": iopath})
    for name in ("sam2.modeling.sam2_utils", "sam2.modeling.backbones.utils", "sam2.modeling.backbones.hieradet"):
        spec = importlib.util.spec_from_file_location(name, os.path.join(src, *name.split(".")) + ".py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["sam2.modeling.backbones.hieradet"].Hiera


def official_fixture() -> None:
    Hiera = _official_trunk_cls()
    sam2 = torch.nn.Module()  # the SAM 2 model's module path to its trunk: image_encoder.trunk
    sam2.image_encoder = torch.nn.Module()
    # configs/sam2.1/sam2.1_hiera_t.yaml
    sam2.image_encoder.trunk = Hiera(embed_dim=96, num_heads=1, stages=[1, 2, 7, 2], global_att_blocks=[5, 7, 9],
                                     window_pos_embed_bkg_spatial_size=[7, 7])
    sam2.eval()
    shapes = fill_module(sam2)
    out = {}
    for hw in ((256, 256), (256, 384)):
        for j, m in enumerate(sam2.image_encoder.trunk(golden_input((1, 3, *hw)))):
            out[f"stage{j}_{_s(hw)}"] = m[:, :4]
    save_fixture(OUT / "official_sam2.1_hiera_tiny.safetensors", out, shapes,
                 reference="facebookresearch/sam2 sam2/modeling/backbones/hieradet.py (commit 2b90b9f)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    tiny_fixture()
    base_plus_fixture()
    variants_json()
    official_fixture()
