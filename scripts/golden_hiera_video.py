"""Golden fixtures for Hiera video (run in the reference environment, see scripts/golden_common.py).

Written to tests/golden/hiera/ from the official hiera-transformer package (its own key names), weights filled by
the rule (tests/golden/fill.py). Full-size video models at 16x224 are too slow for CI, so Hiera-B video is built
with a small ``input_size``: the official ``Hiera`` / ``MaskedAutoencoderHiera`` classes with the arguments of
``hiera_base_16x224`` / ``mae_hiera_base_16x224`` (those constructors fix input_size=(16, 224, 224)):
  official_hiera_base_16x224_at<T>x<H>x<W>.safetensors
                                logits (train mode: the official head softmaxes in eval mode) and the 4 stage maps of
                                ``return_intermediates`` (official layout (B, t, h, w, C), first 4 channels) for one
                                golden clip; the stage-1 tokens in the official token order; with a fixed mask over
                                half the units, the encoder's final tokens; at 4x64x64 and 8x64x96 (non-square, 4
                                temporal tokens). First 4 channels throughout.
  official_mae_hiera_base_16x224_at8x64x64.safetensors
                                official MaskedAutoencoderHiera, a batch of 2 golden clips and a fixed mask over the
                                (t, u, v) units (True = visible): loss, every 8th masked prediction / label row.
  video_shapes.json             key names/shapes of the official hiera_*_16x224 and mae_hiera_*_16x224 models at full
                                size (built without random init).
    cd scripts && ../.ref/bin/python golden_hiera_video.py
"""
import json
import sys

import hiera
import torch
from hiera.hiera_mae import MaskedAutoencoderHiera

from golden_common import GOLDEN, fill_module, golden_input, save_fixture

OUT = GOLDEN / "hiera"
REF_OFFICIAL = "hiera-transformer 0.1.4 (module hiera)"
SIZES = ("base", "base_plus", "large", "huge")
# the arguments hiera_base_16x224 passes to Hiera (Hiera-B widths and depths are Hiera's defaults)
VIDEO = dict(num_classes=400, q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
             patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True)


def fixed_mask(batch: int, units: int, keep: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    ranks = torch.rand(batch, units, generator=g).argsort(1).argsort(1)
    return ranks < keep


def classifier_fixtures() -> None:
    for T, H, W in ((4, 64, 64), (8, 64, 96)):
        model = hiera.Hiera(input_size=(T, H, W), **VIDEO).train()  # train: logits
        shapes = fill_module(model)
        x = golden_input((1, 3, T, H, W))
        raw = {}  # stage-1 output tokens in the official (unrolled) order, from a hook on its last block
        hook = model.blocks[model.stage_ends[0]].register_forward_hook(lambda m, i, o: raw.setdefault("t", o))
        logits, feats = model(x, return_intermediates=True)
        hook.remove()
        out = {"logits": logits, "tokens_stage0": raw["t"][..., :4]}
        out.update({f"stage{i}": f[..., :4] for i, f in enumerate(feats)})  # (1, t, h, w, 4)
        # a mask over the (t, u, v) units (True = keep): the official forward then returns the encoder's last tokens
        units = (T // 2) * (H // 32) * (W // 32)
        mask = fixed_mask(1, units, keep=units // 2)
        out["mask"], out["masked_final"] = mask.float(), model(x, mask=mask)[..., :4]
        save_fixture(OUT / f"official_hiera_base_16x224_at{T}x{H}x{W}.safetensors", out, shapes,
                     input=[1, 3, T, H, W], num_frames=T, img_size=[H, W], reference=REF_OFFICIAL)
        del model


def mae_fixture() -> None:
    T, H, W = 8, 64, 64
    mae = MaskedAutoencoderHiera(input_size=(T, H, W), q_pool=2, **VIDEO).eval()
    shapes = fill_module(mae)
    x = golden_input((2, 3, T, H, W))
    units = (T // 2) * (H // 32) * (W // 32)  # 16
    mask = fixed_mask(2, units, keep=4)
    loss, pred, label, _ = mae(x, mask=mask)
    out = {"loss": loss.reshape(1), "mask": mask.float(), "pred_rows": pred[::8], "label_rows": label[::8]}
    save_fixture(OUT / f"official_mae_hiera_base_16x224_at{T}x{H}x{W}.safetensors", out, shapes,
                 input=[2, 3, T, H, W], num_frames=T, img_size=[H, W], reference=REF_OFFICIAL)


def shapes_json() -> None:
    out = {}
    saved = {f: getattr(torch.nn.init, f) for f in ("trunc_normal_", "xavier_uniform_", "constant_")}
    for f in saved:  # shapes only: skip the (slow) random init of the big models
        setattr(torch.nn.init, f, lambda t, *a, **k: t)
    for size in SIZES:
        for name in (f"hiera_{size}_16x224", f"mae_hiera_{size}_16x224"):
            model = getattr(hiera, name)(pretrained=False)
            out[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
            del model
    for f, fn in saved.items():
        setattr(torch.nn.init, f, fn)
    (OUT / "video_shapes.json").write_text(json.dumps(out, separators=(",", ":")))
    print("wrote video_shapes.json")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    classifier_fixtures()
    if sys.argv[1:] != ["classifier"]:
        mae_fixture()
        shapes_json()
