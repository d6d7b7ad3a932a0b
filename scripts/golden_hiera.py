"""Golden fixtures for Hiera and MAE-Hiera (run in the reference environment, see scripts/golden_common.py).

Written to tests/golden/hiera/:
  timm_<name>.safetensors       timm's hiera_*_224 filled by the rule: logits of one golden 224 input, key shapes;
                                for hiera_tiny_224 also the 4 stage maps of forward_intermediates (first 8 channels).
  official_<name>.safetensors   the official hiera-transformer classifier (its own key names: norm., head.projection.)
                                filled by the rule: logits (train mode: the official head softmaxes in eval mode).
                                hiera_tiny_224 at 224 and at 64 px (input_size=(64, 64)), hiera_base_plus_224 at 224.
  official_mae_hiera_tiny_224.safetensors
                                official MaskedAutoencoderHiera filled by the rule, a batch of 2 golden inputs and a
                                fixed mask (True = visible): loss, every 16th masked prediction / label row; plus the
                                last-stage map of the official *classifier* loaded (strict=False, as the official
                                loader does) from that MAE checkpoint: the MAE encoder inside a classifier.
  mae_shapes.json               key names/shapes of the official mae_hiera_*_224 models (built without random init).
    .ref/bin/python scripts/golden_hiera.py
"""
import json

import hiera
import timm
import torch
from hiera.hiera_mae import MaskedAutoencoderHiera

from golden_common import GOLDEN, fill_module, golden_input, save_fixture

SIZES = ("tiny", "small", "base", "base_plus", "large", "huge")
OUT = GOLDEN / "hiera"
REF_OFFICIAL = "hiera-transformer 0.1.4 (module hiera)"


def fixed_mask(batch: int, units: int, keep: int) -> torch.Tensor:
    """A deterministic mask (True = visible) with `keep` visible units per image, different per image."""
    g = torch.Generator().manual_seed(1234)
    ranks = torch.rand(batch, units, generator=g).argsort(1).argsort(1)
    return ranks < keep


def timm_fixtures() -> None:
    for size in SIZES:
        name = f"hiera_{size}_224"
        model = timm.create_model(name, pretrained=False).eval()
        shapes = fill_module(model)
        x = golden_input((1, 3, 224, 224))
        outputs = {"logits": model(x)}
        if size == "tiny":
            feats = model.forward_intermediates(x, intermediates_only=True)
            outputs.update({f"stage{i}": f[:, :8] for i, f in enumerate(feats)})  # 8 channels keep it small
        save_fixture(OUT / f"timm_{name}.safetensors", outputs, shapes, input=[1, 3, 224, 224],
                     reference=f"timm {timm.__version__}")
        del model


def official_fixtures() -> None:
    for name, res in (("hiera_tiny_224", 224), ("hiera_tiny_224", 64), ("hiera_base_plus_224", 224)):
        model = getattr(hiera, name)(pretrained=False, input_size=(res, res)).train()  # train: logits, no softmax
        shapes = fill_module(model)
        x = golden_input((1, 3, res, res))
        tag = name if res == 224 else f"{name}_at{res}"
        save_fixture(OUT / f"official_{tag}.safetensors", {"logits": model(x)}, shapes, input=[1, 3, res, res],
                     img_size=res, reference=REF_OFFICIAL)
        del model


def official_mae_fixture() -> None:
    mae = hiera.mae_hiera_tiny_224(pretrained=False).eval()
    shapes = fill_module(mae)
    x = golden_input((2, 3, 224, 224))
    mask = fixed_mask(2, 49, keep=int(49 * (1 - 0.6)))
    loss, pred, label, _ = mae(x, mask=mask)
    # the encoder of this checkpoint inside the official classifier
    clf = hiera.hiera_tiny_224(pretrained=False).eval()
    missing, unexpected = clf.load_state_dict(mae.state_dict(), strict=False)
    assert set(missing) == {"norm.weight", "norm.bias", "head.projection.weight", "head.projection.bias"}, missing
    _, feats = clf(golden_input((1, 3, 224, 224)), return_intermediates=True)
    outputs = {
        "loss": loss.reshape(1), "mask": mask.float(), "pred_rows": pred[::16], "label_rows": label[::16],
        "encoder_stage3": feats[-1].permute(0, 3, 1, 2),  # (1, 768, 7, 7) NCHW
    }
    save_fixture(OUT / "official_mae_hiera_tiny_224.safetensors", outputs, shapes, input=[2, 3, 224, 224],
                 reference=REF_OFFICIAL)


def mae_shapes() -> None:
    out = {}
    saved = {f: getattr(torch.nn.init, f) for f in ("trunc_normal_", "xavier_uniform_", "constant_")}
    for f in saved:  # shapes only: skip the (slow) random init of the big models
        setattr(torch.nn.init, f, lambda t, *a, **k: t)
    for size in SIZES:
        model = getattr(hiera, f"mae_hiera_{size}_224")(pretrained=False)
        assert isinstance(model, MaskedAutoencoderHiera)
        out[f"mae_hiera_{size}_224"] = {k: list(v.shape) for k, v in model.state_dict().items()}
        del model
    for f, fn in saved.items():
        setattr(torch.nn.init, f, fn)
    (OUT / "mae_shapes.json").write_text(json.dumps(out, indent=0))
    print("wrote mae_shapes.json")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    mae_shapes()
    official_mae_fixture()
    official_fixtures()
    timm_fixtures()
