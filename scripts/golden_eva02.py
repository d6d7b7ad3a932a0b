"""Golden fixtures for EVA-02 from timm (run in the reference environment, see scripts/golden_common.py).

For each variant: fill timm's model with the deterministic rule and run one golden input at its resolution. The
336/448 classifiers store the logits; the headless MIM ``*_224`` trunks store the pooled features (mean of patch
tokens -> fc_norm) and every 37th token of ``forward_features``. ``eva02_tiny_patch14_224_dynamic`` holds timm's
``dynamic_img_size=True`` outputs of the 224 weights at 336, 448 and a 224x336 input (RoPE and position embedding
interpolated to the new grid), plus four intermediate block maps at 224. ``api_eva02_tiny_patch14_224`` holds timm's
model API on the 224 weights at 112x112 (forward_intermediates for several indices / norm / NLC / prefix tokens /
stop_early, pruned models, reset_classifier(0, ''), feature_info, a global_pool='token' classifier);
``sizes_eva02_tiny_patch14_224`` non-square and dynamic_img_pad sizes and timm's resample_patch_embed.
    .ref/bin/python scripts/golden_eva02.py [name ... | dynamic | api | sizes]
"""
import copy
import sys

import timm
import torch

from golden_common import GOLDEN, fill_module, golden_input, save_fixture

NAMES = [f"eva02_{s}_patch14_{r}" for s, r in
         [("tiny", 224), ("small", 224), ("base", 224), ("large", 224),
          ("tiny", 336), ("small", 336), ("base", 448), ("large", 448)]]
TOKEN_STEP = 37  # keep fixtures small: every 37th token of forward_features
REF = f"timm {timm.__version__}"


def fixture(name: str) -> None:
    model = timm.create_model(name, pretrained=False).eval()
    shapes = fill_module(model)
    res = int(name.rsplit("_", 1)[1])
    x = golden_input((1, 3, res, res))
    feats = model.forward_features(x)
    outputs = {"pooled": model.forward_head(feats, pre_logits=True), "tokens": feats[:, ::TOKEN_STEP]}
    if model.num_classes:
        outputs["logits"] = model.forward_head(feats)
    save_fixture(GOLDEN / "eva02" / f"{name}.safetensors", outputs, shapes, input=[1, 3, res, res],
                 token_step=TOKEN_STEP, reference=REF)


def dynamic_fixture() -> None:
    """224 weights run at other sizes with timm's dynamic_img_size=True."""
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, dynamic_img_size=True).eval()
    shapes = fill_module(model)
    outputs = {}
    for h, w in [(336, 336), (448, 448), (224, 336)]:
        feats = model.forward_features(golden_input((1, 3, h, w)))
        outputs[f"pooled_{h}x{w}"] = model.forward_head(feats, pre_logits=True)
        outputs[f"tokens_{h}x{w}"] = feats[:, ::TOKEN_STEP]
    inter = model.forward_intermediates(golden_input((1, 3, 224, 224)), indices=[2, 5, 8, 11],
                                        intermediates_only=True)
    outputs.update({f"block{i}": f[:, :8] for i, f in zip([2, 5, 8, 11], inter)})  # 8 channels, (1, 8, 16, 16)
    save_fixture(GOLDEN / "eva02" / "eva02_tiny_patch14_224_dynamic.safetensors", outputs, shapes,
                 token_step=TOKEN_STEP, reference=REF)


API_INPUT = (1, 3, 112, 112)  # an 8x8 grid: the timm drop-in fixtures run the 224 weights at 112 (dynamic_img_size)
CH = 8  # channels kept of each intermediate map / token


def _maps(out) -> list[torch.Tensor]:
    return [f[:, :CH] if f.ndim == 4 else f[..., :CH] for f in out]


def api_fixture() -> None:
    """timm's model API on eva02_tiny_patch14_224 (dynamic_img_size=True, 112x112 input): forward_intermediates for
    several indices / norm / NLC / prefix tokens / stop_early, pruned models, reset_classifier(0, ''), feature_info,
    a classifier built with global_pool='token' (final norm instead of fc_norm)."""
    name = "eva02_tiny_patch14_224"
    model = timm.create_model(name, pretrained=False, dynamic_img_size=True).eval()
    shapes = fill_module(model)
    x = golden_input(API_INPUT)
    out = {}
    for key, kw in [("none", {}), ("3", dict(indices=3)), ("0_5_11", dict(indices=[0, 5, 11])),
                    ("m1", dict(indices=[-1])), ("norm", dict(indices=[0, 5, 11], norm=True)),
                    ("nlc", dict(indices=[1, -2], output_fmt="NLC")), ("early", dict(indices=[4], stop_early=True))]:
        final, inter = model.forward_intermediates(x, **kw)
        out[f"fi_{key}_final"] = final[..., :CH]
        for i, f in enumerate(_maps(inter)):
            out[f"fi_{key}_{i}"] = f
    inter = model.forward_intermediates(x, indices=[2, 7], return_prefix_tokens=True, intermediates_only=True)
    for i, (f, prefix) in enumerate(inter):
        out[f"prefix_{i}_map"], out[f"prefix_{i}_tokens"] = f[:, :CH], prefix[..., :CH]
    for key, kw in [("5", dict(indices=[1, 5])), ("norm", dict(indices=2, prune_norm=True))]:
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers(**kw)
        out[f"prune_{key}_take"] = torch.tensor(take, dtype=torch.float32)
        final, inter = pruned.forward_intermediates(x, indices=kw["indices"])
        out[f"prune_{key}_final"] = final[..., :CH]
        for i, f in enumerate(_maps(inter)):
            out[f"prune_{key}_{i}"] = f
        out[f"prune_{key}_forward"] = pruned(x)[..., :CH]  # head pruned: all tokens, no fc_norm
    reset = copy.deepcopy(model)
    reset.reset_classifier(0, "")
    out["reset0_forward"] = reset(x)[..., :CH]  # all tokens through fc_norm
    reset.reset_classifier(5, "token")
    torch.manual_seed(0)
    out["reset5_shape"] = torch.tensor(reset(x).shape, dtype=torch.float32)
    token = timm.create_model("eva02_tiny_patch14_336", pretrained=False, global_pool="token", num_classes=10,
                              dynamic_img_size=True).eval()
    token_shapes = fill_module(token)
    tfinal, tinter = token.forward_intermediates(x, indices=[-1], norm=True)
    out["token_logits"], out["token_final"], out["token_inter"] = token(x), tfinal[..., :CH], tinter[0][:, :CH]
    save_fixture(GOLDEN / "eva02" / "api_eva02_tiny_patch14_224.safetensors", out, shapes, input=list(API_INPUT),
                 feature_info=model.feature_info, num_features=model.num_features,
                 head_hidden_size=model.head_hidden_size, token_shapes={k: list(v) for k, v in token_shapes.items()},
                 group_matcher=model.group_matcher(), reference=REF)


def sizes_fixture() -> None:
    """Run-time sizes: the 224 weights at non-square inputs (dynamic_img_size=True), and with dynamic_img_pad=True at
    sizes that are not multiples of 14; timm's FlexiViT patch-embedding resample 14 -> 16."""
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, dynamic_img_size=True).eval()
    shapes = fill_module(model)
    padded = timm.create_model("eva02_tiny_patch14_224", pretrained=False, dynamic_img_size=True,
                               dynamic_img_pad=True).eval()
    fill_module(padded)
    out = {}
    for h, w in [(112, 168), (196, 126)]:
        x = golden_input((1, 3, h, w))
        feats = model.forward_features(x)
        out[f"tokens_{h}x{w}"] = feats[:, ::TOKEN_STEP]
        out[f"pooled_{h}x{w}"] = model.forward_head(feats, pre_logits=True)
        for i, f in zip([0, 11], model.forward_intermediates(x, indices=[0, 11], intermediates_only=True)):
            out[f"block{i}_{h}x{w}"] = f[:, :CH]
    for h, w in [(100, 130), (112, 141)]:
        x = golden_input((1, 3, h, w))
        out[f"pad_pooled_{h}x{w}"] = padded.forward_head(padded.forward_features(x), pre_logits=True)
        (f,) = padded.forward_intermediates(x, indices=[-1], intermediates_only=True)
        out[f"pad_block11_{h}x{w}"] = f[:, :CH]
    from timm.layers import resample_patch_embed
    kernel = golden_input((4, 3, 14, 14))
    out["patch_kernel_16"] = resample_patch_embed(kernel, [16, 16])
    out["patch_kernel_12x10"] = resample_patch_embed(kernel, [12, 10])
    save_fixture(GOLDEN / "eva02" / "sizes_eva02_tiny_patch14_224.safetensors", out, shapes, token_step=TOKEN_STEP,
                 reference=REF)


def main(names: list[str]) -> None:
    torch.set_grad_enabled(False)
    for name in names:
        if name == "dynamic":
            dynamic_fixture()
        elif name == "api":
            api_fixture()
        elif name == "sizes":
            sizes_fixture()
        else:
            fixture(name)


if __name__ == "__main__":
    main(sys.argv[1:] or NAMES + ["dynamic", "api", "sizes"])
