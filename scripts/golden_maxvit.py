"""Golden fixtures for MaxViT from timm (run in the reference environment, see scripts/golden_common.py).

For each variant: fill timm's model with the deterministic rule, run one golden input, store the logits and the
checkpoint's key names/shapes. For maxvit_tiny_tf_224 also the four stage outputs of forward_intermediates.
    .ref/bin/python scripts/golden_maxvit.py [name ...]
"""
import sys

import timm
import torch

from golden_common import GOLDEN, fill_module, golden_input, save_fixture

SIZES = ("tiny", "small", "base", "large", "xlarge")
NAMES = [f"maxvit_{s}_tf_{r}" for s in SIZES for r in (224, 384, 512)]


def main(names: list[str]) -> None:
    torch.set_grad_enabled(False)
    for name in names:
        model = timm.create_model(name, pretrained=False).eval()
        shapes = fill_module(model)
        res = int(name.rsplit("_", 1)[1])
        x = golden_input((1, 3, res, res))
        outputs = {"logits": model(x)}
        if name == "maxvit_tiny_tf_224":
            feats = model.forward_intermediates(x, indices=4, intermediates_only=True)
            outputs.update({f"stage{i}": f[:, :8] for i, f in enumerate(feats)})  # 8 channels keep it small
        save_fixture(GOLDEN / "maxvit" / f"{name}.safetensors", outputs, shapes,
                     input=[1, 3, res, res], reference=f"timm {timm.__version__}")
        del model


if __name__ == "__main__":
    main(sys.argv[1:] or NAMES)
