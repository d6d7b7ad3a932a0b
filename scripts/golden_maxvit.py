"""Golden fixtures for MaxViT from timm (run in the reference environment, see scripts/golden_common.py).

    .ref/bin/python scripts/golden_maxvit.py [logits] [api] [sizes]

logits: for each released variant, fill timm's model with the deterministic rule, run one golden input, store the
        logits and the checkpoint's key names/shapes (tests/golden/maxvit/<name>.safetensors).
api:    timm's model API on maxvit_tiny_tf_224 (tests/golden/maxvit/api/): forward_intermediates for several
        `indices` (with norm, stop_early, intermediates_only), pruned models, reset_classifier(0, '') and (0),
        feature_info; and the same API's shapes for maxvit_small_tf_384 (shapes only, JSON).
sizes:  run-time sizes (tests/golden/maxvit/sizes/): timm created *at* the size with the trained partition kept
        (transformer_window_size = transformer_grid_size = 7 or 2), for maxvit_tiny_tf_224 at 448x224 / 224x448 and
        for a nano configuration (bettervit's maxvit_nano, built in timm from a MaxxVitCfg) at several sizes, plus a
        nano created non-square (96x64: partition 3x2).
Maps are stored as `sample(f)`: the first 8 channels, every s-th pixel (s keeps the smaller side near 14).
"""
import json
import sys

import timm
import torch
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, _tf_cfg

from golden_common import GOLDEN, fill_module, golden_input, save_fixture

SIZES = ("tiny", "small", "base", "large", "xlarge")
NAMES = [f"maxvit_{s}_tf_{r}" for s in SIZES for r in (224, 384, 512)]
REF = f"timm {timm.__version__}"


def sample(f: torch.Tensor) -> torch.Tensor:
    s = max(1, min(f.shape[-2:]) // 14)
    return f[:, :8, ::s, ::s].clone()


def logits_fixtures(names: list[str]) -> None:
    for name in names:
        model = timm.create_model(name, pretrained=False).eval()
        shapes = fill_module(model)
        res = int(name.rsplit("_", 1)[1])
        x = golden_input((1, 3, res, res))
        save_fixture(GOLDEN / "maxvit" / f"{name}.safetensors", {"logits": model(x)}, shapes,
                     input=[1, 3, res, res], reference=REF)
        del model


def _filled(name: str, **kw) -> tuple[torch.nn.Module, dict]:
    model = timm.create_model(name, pretrained=False, **kw).eval()
    return model, fill_module(model)


# forward_intermediates calls recorded: tag -> kwargs
CALLS = {
    "all": dict(indices=None),
    "all_norm": dict(indices=None, norm=True),
    "last2": dict(indices=2),
    "pick": dict(indices=[0, 2, 4]),
    "pick_norm": dict(indices=[0, 2, 4], norm=True),
    "neg": dict(indices=[-1]),
    "stop": dict(indices=[0, 2], stop_early=True),
}


def api_fixtures() -> None:
    name = "maxvit_tiny_tf_224"
    x = golden_input((1, 3, 224, 224))
    model, shapes = _filled(name)
    out, meta = {"logits": model(x)}, {}
    for tag, kw in CALLS.items():
        final, maps = model.forward_intermediates(x, **kw)
        only = model.forward_intermediates(x, intermediates_only=True, **kw)
        assert len(only) == len(maps) and all(torch.equal(a, b) for a, b in zip(only, maps))
        out[f"{tag}.final"] = sample(final)
        out.update({f"{tag}.{i}": sample(f) for i, f in enumerate(maps)})
        meta[tag] = dict(kwargs=kw, shapes=[list(f.shape) for f in maps], final_shape=list(final.shape))
    meta["feature_info"] = model.feature_info
    meta["num_features"], meta["head_hidden_size"] = model.num_features, model.head_hidden_size

    # pruning: keep levels 1 and 2 (stages 0, 1) -> the head becomes a pass-through
    pruned, _ = _filled(name)
    meta["prune_take"] = pruned.prune_intermediate_layers([1, 2])
    y = pruned(x)
    out["pruned.out"] = sample(y)
    meta["pruned"] = dict(out_shape=list(y.shape), num_features=pruned.num_features,
                          head_hidden_size=pruned.head_hidden_size, num_classes=pruned.num_classes)
    # pruning that keeps every stage and the head
    kept, _ = _filled(name)
    meta["prune_keep_take"] = kept.prune_intermediate_layers((0, 1, 2, 3, 4), prune_head=False)
    out["prune_keep.logits"] = kept(x).clone()
    # last level only, head pruned: the output is the last map itself
    last, _ = _filled(name)
    last.prune_intermediate_layers([-1], prune_norm=True)
    out["prune_last.out"] = sample(last(x))

    # reset_classifier(0, ''): no pooling, no classifier -> per-pixel pre-logits map
    nopool, _ = _filled(name)
    nopool.reset_classifier(0, "")
    y = nopool(x)
    out["reset0_nopool.out"] = y[:, :8]
    meta["reset0_nopool"] = dict(out_shape=list(y.shape), head_hidden_size=nopool.head_hidden_size,
                                 pre_logits_shape=list(nopool.forward_head(nopool.forward_features(x), True).shape))
    avg, _ = _filled(name)
    avg.reset_classifier(0)
    out["reset0_avg.out"] = avg(x)
    # created without pooling
    created, cshapes = _filled(name, global_pool="", num_classes=10)
    y = created(x)
    out["nopool10.out"] = y
    meta["nopool10"] = dict(out_shape=list(y.shape), shapes={k: list(v) for k, v in cshapes.items() if k.startswith("head.")})
    save_fixture(GOLDEN / "maxvit" / "api" / f"{name}.safetensors", out, shapes,
                 input=[1, 3, 224, 224], reference=REF, api=meta)

    # another size: shapes only
    small = timm.create_model("maxvit_small_tf_384", pretrained=False).eval()
    xs = torch.randn(1, 3, 384, 384)
    info = dict(feature_info=small.feature_info, num_features=small.num_features,
                head_hidden_size=small.head_hidden_size, reference=REF)
    for tag, kw in CALLS.items():
        final, maps = small.forward_intermediates(xs, **kw)
        info[tag] = dict(kwargs=kw, shapes=[list(f.shape) for f in maps], final_shape=list(final.shape))
    small.prune_intermediate_layers([1, 2])
    info["pruned"] = dict(out_shape=list(small(xs).shape), num_features=small.num_features,
                          head_hidden_size=small.head_hidden_size)
    path = GOLDEN / "maxvit" / "api" / "maxvit_small_tf_384_shapes.json"
    path.write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {path}")


def nano_cfg() -> MaxxVitCfg:
    """bettervit's maxvit_nano in timm's terms (64 px, partition 2)."""
    return MaxxVitCfg(embed_dim=(32, 64, 128, 256), depths=(1, 1, 1, 1), block_type=("M",) * 4, stem_width=32,
                      stem_bias=True, head_hidden_size=256, **_tf_cfg())


def _run_sizes(tag: str, make, sizes: list[tuple[int, int]], base: tuple[int, int]) -> None:
    out, shapes = {}, None
    for h, w in sizes:
        model = make((h, w)).eval()
        s = fill_module(model)
        shapes = shapes or s
        assert s == shapes, "the checkpoint must not depend on the run-time size"
        x = golden_input((1, 3, h, w))
        out[f"{h}x{w}.logits"] = model(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
        out.update({f"{h}x{w}.{i}": sample(f) for i, f in enumerate(maps)})
    save_fixture(GOLDEN / "maxvit" / "sizes" / f"{tag}.safetensors", out, shapes, sizes=sizes,
                 img_size=list(base), reference=REF)


def size_fixtures() -> None:
    torch.manual_seed(0)
    _run_sizes("maxvit_tiny_tf_224", lambda hw: timm.create_model(
        "maxvit_tiny_tf_224", img_size=hw, transformer_window_size=(7, 7), transformer_grid_size=(7, 7)),
        [(448, 224), (224, 448)], (224, 224))
    _run_sizes("maxvit_nano", lambda hw: MaxxVit(
        nano_cfg(), img_size=hw, transformer_window_size=(2, 2), transformer_grid_size=(2, 2)),
        [(64, 64), (128, 64), (64, 192)], (64, 64))
    # created non-square: partition (96 / 32, 64 / 32) = (3, 2), run at the creation size and at 2x its height
    _run_sizes("maxvit_nano_96x64", lambda hw: MaxxVit(
        nano_cfg(), img_size=hw, transformer_window_size=(3, 2), transformer_grid_size=(3, 2)),
        [(96, 64), (192, 64)], (96, 64))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    what = sys.argv[1:] or ["logits", "api", "sizes"]
    if "logits" in what:
        logits_fixtures(NAMES)
    if "api" in what:
        api_fixtures()
    if "sizes" in what:
        size_fixtures()
