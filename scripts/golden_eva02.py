"""Golden fixtures for EVA-02 from timm (run in the reference environment, see scripts/golden_common.py).

For each variant: fill timm's model with the deterministic rule and run one golden input at its resolution. The
336/448 classifiers store the logits; the headless MIM ``*_224`` trunks store the pooled features (mean of patch
tokens -> fc_norm) and every 37th token of ``forward_features``. ``eva02_tiny_patch14_224_dynamic`` holds timm's
``dynamic_img_size=True`` outputs of the 224 weights at 336, 448 and a 224x336 input (RoPE and position embedding
interpolated to the new grid), plus four intermediate block maps at 224.
    .ref/bin/python scripts/golden_eva02.py [name ...]
"""
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


def main(names: list[str]) -> None:
    torch.set_grad_enabled(False)
    for name in names:
        if name == "dynamic":
            dynamic_fixture()
        else:
            fixture(name)


if __name__ == "__main__":
    main(sys.argv[1:] or NAMES + ["dynamic"])
