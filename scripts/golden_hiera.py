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
  timm_api_hiera_tiny_224.safetensors
                                timm's hiera_tiny_224 built at img_size=64, filled by the rule, one golden 64x64 input:
                                forward_intermediates for several indices / output formats / a mask (first 8 channels
                                of each map, the full final tokens), pruned models' outputs, reset_classifier(0, ''),
                                and in the metadata feature_info and features_only's channels / reductions / modules.
  timm_sizes_hiera_tiny_224.safetensors
                                timm's hiera_tiny_224 created at 256x192 and 160x320 with the rule's 224 checkpoint,
                                its position embedding resampled by timm's resample_abs_pos_embed with its defaults
                                (bicubic, antialias): logits and the 4 stage maps (first 4 channels) of one golden
                                input each.
    .ref/bin/python scripts/golden_hiera.py
"""
import json
import sys

import hiera
import timm
import torch
from hiera.hiera_mae import MaskedAutoencoderHiera

from golden_common import GOLDEN, fill_module, golden_input, save_fixture
from fill import fill_state_dict

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


def _maps(prefix: str, maps, outputs: dict, channels: int = 8, fmt: str = "NCHW") -> None:
    for i, f in enumerate(maps):
        outputs[f"{prefix}.{i}"] = f[:, :channels] if fmt == "NCHW" else f[..., :channels]


def api_fixture() -> None:
    """The timm model API on hiera_tiny_224 built at 64 px (small maps, every code path of the 224 model)."""
    def fresh():
        m = timm.create_model("hiera_tiny_224", img_size=64).eval()
        fill_module(m)
        return m

    model = fresh()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    x = golden_input((1, 3, 64, 64))
    out, meta = {"logits": model(x)}, {}
    cases = {  # name: forward_intermediates kwargs
        "all_nchw": dict(), "all_nhwc_late": dict(output_fmt="NHWC", stop_early=False), "last2_nhwc": dict(indices=2, output_fmt="NHWC"),
        "pick02_nchw": dict(indices=[0, 2]), "pick02_nhwc": dict(indices=[0, 2], output_fmt="NHWC"),
        "neg1_nchw": dict(indices=[-1]), "blocks_1_5": dict(indices=[1, 5], coarse=False),
        "last1_blocks": dict(indices=1, coarse=False, stop_early=True),
    }
    for name, kw in cases.items():
        final, maps = model.forward_intermediates(x, **kw)
        out[f"fi.{name}.final"] = final
        _maps(f"fi.{name}", maps, out, fmt=kw.get("output_fmt", "NCHW"))
        meta[name] = [list(f.shape) for f in maps]
    # with a mask (True = keep): units of 8x8 tokens at 64 px -> a 2x2 unit grid, keep 2 units
    mask = torch.tensor([[True, False, False, True]])
    final, maps = model.forward_intermediates(x, mask=mask, output_fmt="NHWC")
    out["fi.mask.final"] = final
    _maps("fi.mask", maps, out, fmt="NHWC")
    out["mask"] = mask.float()
    out["features_mask"] = model.forward_features(x, mask=mask)
    meta["mask"] = [list(f.shape) for f in maps]
    meta["feature_info"] = model.feature_info

    for name, kw in {"prune02": dict(indices=[0, 2]), "prune4": dict(indices=4),
                     "prune1_keephead": dict(indices=[1], prune_head=False)}.items():
        m = fresh()
        take = m.prune_intermediate_layers(**kw)
        out[f"{name}.forward"] = m(x)
        _maps(f"{name}.fi", m.forward_intermediates(x, indices=take, intermediates_only=True), out)
        meta[name] = dict(take=list(take), num_features=m.num_features, head_hidden_size=m.head_hidden_size,
                          blocks=len(m.blocks), num_classes=m.num_classes)
    m = fresh()
    m.reset_classifier(0, "")
    out["reset0_nopool"] = m(x)
    meta["reset0_nopool"] = dict(num_classes=m.num_classes, num_features=m.num_features,
                                 head_hidden_size=m.head_hidden_size)

    feat = timm.create_model("hiera_tiny_224", img_size=64, features_only=True, out_indices=(1, 2, 3)).eval()
    fill_module(feat.model)  # the wrapper's keys carry a "model." prefix: fill the model's own names
    _maps("features_only", feat(x), out)
    fi = feat.feature_info
    meta["features_only"] = dict(channels=fi.channels(), reduction=fi.reduction(), module_name=fi.module_name())
    feat = timm.create_model("hiera_tiny_224", img_size=64, features_only=True)
    fi = feat.feature_info
    meta["features_only_default"] = dict(channels=fi.channels(), reduction=fi.reduction(), module_name=fi.module_name())
    save_fixture(OUT / "timm_api_hiera_tiny_224.safetensors", out, shapes, input=[1, 3, 64, 64], img_size=64,
                 reference=f"timm {timm.__version__}", **meta)


def sizes_fixture() -> None:
    """Built at 224, run at other sizes: timm's model created at that size with the resampled position embedding."""
    from timm.layers import resample_abs_pos_embed

    base = timm.create_model("hiera_tiny_224")
    shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    sd = fill_state_dict(shapes)
    out, meta = {}, {}
    for h, w in ((256, 192), (160, 320)):
        model = timm.create_model("hiera_tiny_224", img_size=(h, w)).eval()
        moved = dict(sd)
        moved["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=(h // 4, w // 4), old_size=(56, 56),
                                                    num_prefix_tokens=0)  # timm's default: antialias=True
        model.load_state_dict(moved, strict=True)
        x = golden_input((1, 3, h, w))
        tag = f"{h}x{w}"
        out[f"{tag}.logits"] = model(x)
        _maps(f"{tag}.stage", model.forward_intermediates(x, intermediates_only=True), out, channels=4)
        meta[tag] = [1, 3, h, w]
    save_fixture(OUT / "timm_sizes_hiera_tiny_224.safetensors", out, shapes, reference=f"timm {timm.__version__}",
                 sizes=meta)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["api"]:  # only the model-API and run-time-size fixtures
        api_fixture()
        sizes_fixture()
        sys.exit()
    if sys.argv[1:] == ["api-only"]:
        api_fixture()
        sys.exit()
    if sys.argv[1:] == ["sizes"]:  # only the run-time-size fixture
        sizes_fixture()
        sys.exit()
    mae_shapes()
    official_mae_fixture()
    official_fixtures()
    timm_fixtures()
    api_fixture()
    sizes_fixture()
