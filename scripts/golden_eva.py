"""Golden fixtures for EVA, the original (ViT-g/14, Fang et al. CVPR 2023), from timm (run in the reference
environment, see scripts/golden_common.py).

A 1B-parameter model cannot be filled and run in CI, so parity is checked on a small model built exactly as each giant
variant (timm's ``eva_giant_*`` entry point with ``embed_dim=64, depth=3, num_heads=4``; the giant's mlp_ratio
6144/1408, GELU MLP, fused qkv with q/v biases, no RoPE, class token, absolute position embedding, and its head), and
the real variants are compared by structure. Written to tests/golden/eva/:

  small_eva_giant_patch14_224.safetensors
      timm's eva_giant_patch14_224 at the small width (dynamic_img_size=True) filled by the rule: at 224x224 and at the
      non-square run-time size 168x252 the logits, the pooled features and every 37th token of forward_features;
      forward_intermediates for several indices / norm / NLC / prefix tokens / stop_early; pruned models;
      reset_classifier(0, ''); features_only maps (out_indices (0, 2)) with their feature_info and the
      wrapper's state-dict names (filled by their own names); dynamic_img_pad=True
      at 100x130. Maps keep their first 8 channels.
  small_eva_giant_patch14_clip_224.safetensors
      the CLIP image tower at the small width: class-token pooling after the final norm, 1024-d projection; logits,
      pre-logits and normed intermediates at 224x224 and 126x196.
  timm_variants.json
      every eva_giant_* of timm (built on the meta device): state-dict key names and shapes, parameter count, GMACs at
      its pretrained input size (torch's FlopCounterMode, batch 1), num_classes, global_pool, norm placement,
      feature_info length, and the pretrained_cfg fields a user reads.

    .ref/bin/python scripts/golden_eva.py [small | clip | variants]
"""
import copy
import json
import sys

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from golden_common import GOLDEN, fill_module, golden_input, save_fixture

OUT = GOLDEN / "eva"
SMALL = dict(embed_dim=64, depth=3, num_heads=4)  # the giant's structure at a testable width
SIZES = ((224, 224), (168, 252))  # the default grid 16x16 and a non-square 12x18 run-time grid
TOKEN_STEP = 37
CH = 8
REF = f"timm {timm.__version__}"
CFG_FIELDS = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation", "first_conv", "classifier",
              "num_classes", "fixed_input_size", "hf_hub_id", "tag")


def _s(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def _maps(out) -> list:
    return [f[:, :CH] if f.ndim == 4 else f[..., :CH] for f in out]


def small_fixture() -> None:
    name = "eva_giant_patch14_224"
    model = timm.create_model(name, dynamic_img_size=True, **SMALL).eval()
    shapes = fill_module(model)
    out = {}
    for hw in SIZES:
        x = golden_input((1, 3, *hw))
        feats = model.forward_features(x)
        out[f"tokens_{_s(hw)}"] = feats[:, ::TOKEN_STEP]
        out[f"pooled_{_s(hw)}"] = model.forward_head(feats, pre_logits=True)
        out[f"logits_{_s(hw)}"] = model(x)
    x = golden_input((1, 3, *SIZES[1]))  # the API cases run at the non-square size
    for key, kw in [("none", {}), ("2", dict(indices=2)), ("0_2", dict(indices=[0, 2])), ("m1", dict(indices=[-1])),
                    ("norm", dict(indices=[0, 2], norm=True)), ("nlc", dict(indices=[1, -1], output_fmt="NLC")),
                    ("early", dict(indices=[1], stop_early=True))]:
        final, inter = model.forward_intermediates(x, **kw)
        out[f"fi_{key}_final"] = final[..., :CH]
        for i, f in enumerate(_maps(inter)):
            out[f"fi_{key}_{i}"] = f
    for i, (f, prefix) in enumerate(model.forward_intermediates(x, indices=[0, 2], return_prefix_tokens=True,
                                                                intermediates_only=True)):
        out[f"prefix_{i}_map"], out[f"prefix_{i}_tokens"] = f[:, :CH], prefix[..., :CH]
    for key, kw in [("1", dict(indices=[0, 1])), ("norm", dict(indices=1, prune_norm=True))]:
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers(**kw)
        out[f"prune_{key}_take"] = torch.tensor(take, dtype=torch.float32)
        final, inter = pruned.forward_intermediates(x, indices=kw["indices"])
        out[f"prune_{key}_final"] = final[..., :CH]
        for i, f in enumerate(_maps(inter)):
            out[f"prune_{key}_{i}"] = f
        out[f"prune_{key}_forward"] = pruned(x)[..., :CH]
    reset = copy.deepcopy(model)
    reset.reset_classifier(0, "")
    out["reset0_forward"] = reset(x)[..., :CH]
    feat = timm.create_model(name, dynamic_img_size=True, features_only=True, out_indices=(0, 2), **SMALL).eval()
    feat_shapes = fill_module(feat)  # the wrapper's own names ("model." + the pruned trunk's keys)
    for i, f in enumerate(feat(x)):
        out[f"features_{i}"] = f[:, :CH]
    padded = timm.create_model(name, dynamic_img_size=True, dynamic_img_pad=True, **SMALL).eval()
    fill_module(padded)
    xp = golden_input((1, 3, 100, 130))
    out["pad_logits_100x130"] = padded(xp)
    (f,) = padded.forward_intermediates(xp, indices=[-1], intermediates_only=True)
    out["pad_block2_100x130"] = f[:, :CH]
    save_fixture(OUT / f"small_{name}.safetensors", out, shapes, small=SMALL, sizes=SIZES, token_step=TOKEN_STEP,
                 api_input=[1, 3, *SIZES[1]], feature_info=model.feature_info,
                 features_channels=feat.feature_info.channels(), features_reduction=feat.feature_info.reduction(),
                 features_modules=feat.feature_info.module_name(),
                 features_shapes={k: list(v) for k, v in feat_shapes.items()}, group_matcher=model.group_matcher(),
                 no_weight_decay=sorted(model.no_weight_decay()), num_features=model.num_features,
                 head_hidden_size=model.head_hidden_size,
                 pretrained_cfg={k: model.pretrained_cfg.get(k) for k in CFG_FIELDS}, reference=REF)


def clip_fixture() -> None:
    name = "eva_giant_patch14_clip_224"
    model = timm.create_model(name, dynamic_img_size=True, **SMALL).eval()
    shapes = fill_module(model)
    out = {}
    for hw in ((224, 224), (126, 196)):
        x = golden_input((1, 3, *hw))
        feats = model.forward_features(x)
        out[f"tokens_{_s(hw)}"] = feats[:, ::TOKEN_STEP]
        out[f"pre_logits_{_s(hw)}"] = model.forward_head(feats, pre_logits=True)
        out[f"logits_{_s(hw)}"] = model(x)
        final, inter = model.forward_intermediates(x, indices=[0, -1], norm=True)
        out[f"final_{_s(hw)}"] = final[..., :CH]
        for i, f in enumerate(_maps(inter)):
            out[f"inter{i}_{_s(hw)}"] = f
    save_fixture(OUT / f"small_{name}.safetensors", out, shapes, small=SMALL, token_step=TOKEN_STEP,
                 num_classes=model.num_classes, global_pool=model.global_pool,
                 pretrained_cfg={k: model.pretrained_cfg.get(k) for k in CFG_FIELDS}, reference=REF)


def variants_json() -> None:
    info = {}
    for name in timm.list_models("eva_giant*"):
        with torch.device("meta"):  # shapes and FLOPs only
            model = timm.create_model(name).eval()
        size = model.pretrained_cfg["input_size"]
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.empty(1, *size, device="meta"))
        info[name] = dict(
            shapes={k: list(v.shape) for k, v in model.state_dict().items()},
            params=sum(p.numel() for p in model.parameters()),
            flops=fc.get_total_flops(),
            gmacs=fc.get_total_flops() / 2 / 1e9,
            num_classes=model.num_classes, global_pool=model.global_pool,
            fc_norm=not isinstance(model.fc_norm, torch.nn.Identity),
            norm=not isinstance(model.norm, torch.nn.Identity),
            num_features=model.num_features, head_hidden_size=model.head_hidden_size,
            feature_info_len=len(model.feature_info), feature_info_last=model.feature_info[-1],
            mlp_hidden=model.blocks[0].mlp.fc1.out_features,
            pretrained_cfg={k: model.pretrained_cfg.get(k) for k in CFG_FIELDS},
            pretrained_tags=[n.split(".", 1)[1] for n in timm.list_pretrained(name + ".*")],
        )
        del model
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "timm_variants.json").write_text(json.dumps(dict(reference=REF, variants=info)))
    print("wrote timm_variants.json", (OUT / "timm_variants.json").stat().st_size // 1024, "KiB")


def main(parts: list[str]) -> None:
    torch.set_grad_enabled(False)
    for part in parts:
        {"small": small_fixture, "clip": clip_fixture, "variants": variants_json}[part]()


if __name__ == "__main__":
    main(sys.argv[1:] or ["small", "clip", "variants"])
