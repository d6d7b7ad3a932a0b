"""timm's model API over the whole registry: every classifier (MaxViT, Hiera image and video, SAM 2's HieraDet,
EVA-02, EVA giant) at small width and depth (``helpers.small_overrides``), plus the smallest released variant of
three families at full size (slow lane).

The first five tests are timm 1.0.31's own model tests (tests/test_models.py: forward, backward, default cfgs,
features_only, forward_intermediates) translated to bettervit; TorchScript and FX tracing are left out (bettervit
targets torch.compile / torch.export instead). timm classes Hiera, HieraDet and EVA as "non-standard" (their
forward_features is not an NCHW map), MaxViT as standard; the checks follow that split. The rest check the other
parts of the API with timm's meaning (timm's ``_features.py`` / ``_manipulate.py``): forward_intermediates' index
meaning, ``intermediates_only`` and ``stop_early``; ``prune_intermediate_layers``; ``reset_classifier`` /
``get_classifier``; gradient checkpointing; ``no_weight_decay``; ``group_matcher``; and bettervit's layer ids.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import bettervit
from bettervit.factory import get_entry
from bettervit.features import FeatureInfo
from helpers import backward_with_saved_count, build_small, is_mae, is_video, small_input

CLASSIFIERS = [n for n in bettervit.list_models() if not is_mae(n)]
FULL = ["maxvit_tiny_tf_224", "hiera_tiny_224", "eva02_tiny_patch14_224"]  # timm's tests at full size
CASES = [pytest.param(n, True, id=n) for n in CLASSIFIERS] + [
    pytest.param(n, False, id=f"{n}-full", marks=pytest.mark.slow) for n in FULL
]
NON_STD = ("hiera_", "eva02_", "eva_", "sam2_hiera_")
CHANNELS_LAST = ("sam2_hiera_",)  # forward_features gives an NHWC map
TARGET_BWD, TARGET_FFEAT = 128, 96


def _create(name: str, small: bool, **kw) -> nn.Module:
    """A model of its own: the small build (a copy of the cached one) or the full-size default."""
    return build_small(name, fresh=True, **kw) if small else bettervit.create_model(name, **kw)


def _input_size(model, target=None):
    cfg = model.default_cfg
    size = tuple(cfg["input_size"])
    if cfg.get("fixed_input_size") or target is None:
        return size
    return tuple(min(s, target) for s in size) if max(size) > target else size


def _channel_axis(name: str, feats: torch.Tensor) -> int:
    if feats.ndim == 3 or name.startswith(CHANNELS_LAST):
        return -1
    return 1


def _check_maps(maps, chans, reds, size, model) -> None:
    """timm's shape checks per level, plus: exact H / r, W / r where the input side is a multiple of r, and the
    temporal size of video maps (B, C, T / stride_t, h, w)."""
    assert len(maps) == len(chans)
    for c, r, o in zip(chans, reds, maps):
        assert o.shape[1] == c and o.shape[0] == 1 and not o.isnan().any()
        assert o.shape[-2] <= math.ceil(size[-2] / r) + 1 and o.shape[-1] <= math.ceil(size[-1] / r) + 1
        if size[-2] % r == 0 and size[-1] % r == 0:
            assert tuple(o.shape[-2:]) == (size[-2] // r, size[-1] // r)
        if is_video(model):
            assert o.ndim == 5 and o.shape[2] == size[1] // model.config.patch_stride_t
        else:
            assert o.ndim == 4


# --- timm's model tests -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,small", CASES, scope="module")
def test_model_forward(name, small):
    model = _create(name, small).eval()
    x = torch.randn(1, *_input_size(model, 384))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes or model.head_hidden_size) and out.isfinite().all()
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), out)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,small", CASES, scope="module")
def test_model_backward(name, small):
    model = _create(name, small, num_classes=42).train()
    x = torch.randn(2, *_input_size(model, TARGET_BWD))
    out = model(x)
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]
    bad = [n for n, p in model.named_parameters() if not p.grad.isfinite().all()]
    assert not bad, bad[:5]
    assert out.shape[-1] == 42 and not out.isnan().any()


@pytest.mark.parametrize("name,small", CASES, scope="module")
def test_model_default_cfgs(name, small):
    model = _create(name, small).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    cfg, sd = model.default_cfg, model.state_dict()
    x = torch.randn(1, *_input_size(model))
    # the final map's size: timm's pool_size at the config's input size; at a small build's input, input / stride
    pool = tuple(s // model.feature_info[-1]["reduction"] for s in x.shape[-2:])
    if not small and not name.startswith(NON_STD):
        assert pool == tuple(cfg["pool_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape[1] == model.head_hidden_size
        if name.startswith(NON_STD):
            assert feats.shape[_channel_axis(name, feats)] == model.num_features
        else:
            assert tuple(feats.shape[-2:]) == pool and feats.shape[1] == model.num_features
        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape and out.shape[1] == model.head_hidden_size
        if not name.startswith(NON_STD):
            model.reset_classifier(0, "")
            out = model(x)
            assert out.ndim == 4 and tuple(out.shape[-2:]) == pool
            out = _create(name, small, num_classes=0, global_pool="").eval()(x)
            assert out.ndim == 4 and tuple(out.shape[-2:]) == pool
        else:
            out = _create(name, small, num_classes=0).eval()(x)
            assert out.shape[-1] == model.num_features
    if cfg.get("num_classes"):
        assert cfg["classifier"] + ".weight" in sd
    assert cfg["first_conv"] + ".weight" in sd


@pytest.mark.parametrize("name,small", CASES, scope="module")
def test_model_forward_features(name, small):
    model = _create(name, small, features_only=True).eval()
    chans, reds = model.feature_info.channels(), model.feature_info.reduction()
    assert len(chans) >= 3
    size = _input_size(model, TARGET_FFEAT)
    with torch.no_grad():
        outs = model(torch.randn(1, *size))
    _check_maps(outs, chans, reds, size, model.model)


@pytest.mark.parametrize("name,small", CASES, scope="module")
def test_model_forward_intermediates(name, small):
    model = _create(name, small).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    chans, reds = info.channels(), info.reduction()
    assert len(chans) >= 3
    size = _input_size(model, TARGET_FFEAT)
    x = torch.randn(1, *size)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, output_fmt="NCHW")
        _check_maps(inter, chans, reds, size, model)
        torch.testing.assert_close(final, model.forward_features(x))
        model.set_grad_checkpointing()
        final2, _ = model.forward_intermediates(x, output_fmt="NCHW")
        torch.testing.assert_close(final2, final, rtol=1e-4, atol=1e-5)


# --- the rest of the API, small builds of every classifier -------------------------------------------------------
def _runs(model: nn.Module, module_name: str, fn) -> int:
    """How many module calls inside the submodule ``module_name`` (itself included: a model may run a container's
    children without calling the container, or a layer's weights without calling the layer) ``fn()`` made."""
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.get_submodule(module_name).modules()]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return len(calls)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("name", CLASSIFIERS, scope="module")
def test_forward_intermediates_indices(name):
    """None = every level, int n = the last n, a sequence = those levels (negative from the end), out of range
    raises; ``intermediates_only`` returns the maps alone; ``stop_early`` skips what follows the deepest level."""
    model = build_small(name)
    x = small_input(model, batch=1)
    n = len(model.feature_info)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, stop_early=False)
        assert len(maps) == n
        only = model.forward_intermediates(x, intermediates_only=True, stop_early=False)
        assert isinstance(only, list)
        _same(only, maps)
        _same(model.forward_intermediates(x, indices=2, stop_early=False)[1], maps[-2:])
        _same(model.forward_intermediates(x, indices=[0, -1], stop_early=False)[1], [maps[0], maps[-1]])
        for bad in ([n], n + 1):
            with pytest.raises(ValueError):
                model.forward_intermediates(x, indices=bad)
        last = model.feature_info[-1]["module"]
        late = []
        assert _runs(model, last, lambda: late.append(model.forward_intermediates(x, indices=[0], stop_early=False))) > 0
        torch.testing.assert_close(late[0][0], final)
        early = []
        assert _runs(model, last, lambda: early.append(model.forward_intermediates(x, indices=[0], stop_early=True))) == 0
        _same(early[0][1], maps[:1])


@pytest.mark.parametrize("name", CLASSIFIERS, scope="module")
def test_prune_intermediate_layers(name):
    """Pruning to levels [0, n-2] returns their absolute indices, drops the later blocks and the classifier, and the
    kept levels' maps do not change; ``num_features`` is the last kept level's width."""
    model = build_small(name, fresh=True)
    x = small_input(model, batch=1)
    n = len(model.feature_info)
    with torch.no_grad():
        _, maps = model.forward_intermediates(x, stop_early=False)
        params = sum(p.numel() for p in model.parameters())
        take = model.prune_intermediate_layers([0, -2])
        assert list(take) == [0, n - 2]
        assert sum(p.numel() for p in model.parameters()) < params
        assert model.num_features == model.feature_info[n - 2]["num_chs"]
        assert isinstance(model.get_classifier(), nn.Identity)
        kept = model.forward_intermediates(x, indices=take, intermediates_only=True)
        _same(kept, [maps[0], maps[n - 2]])
        out = model(x)
        assert out.isfinite().all() and model.num_features in out.shape


@pytest.mark.parametrize("name", CLASSIFIERS, scope="module")
def test_reset_classifier_and_get_classifier(name):
    model = build_small(name, fresh=True)
    x = small_input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        model.reset_classifier(5)
        fc = model.get_classifier()
        assert isinstance(fc, nn.Linear) and (fc.in_features, fc.out_features) == (model.head_hidden_size, 5)
        assert model.num_classes == 5 and model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
        out = model(x)
        assert out.shape == (2, model.head_hidden_size)
        torch.testing.assert_close(out, pre)
        model.reset_classifier(3, "max")  # a new pooling too
        assert model(x).shape == (2, 3)
        assert not torch.allclose(model.forward_head(feats, pre_logits=True), pre)


def _fwd_bwd(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Output, gradients, and how many tensors autograd saved outside checkpointed regions."""
    def forward():
        out = model(x)
        out = out.loss if hasattr(out, "loss") else out
        return out, out.float().square().mean()

    return backward_with_saved_count(model, forward)


@pytest.mark.parametrize("name", CLASSIFIERS, scope="module")
def test_grad_checkpointing_same_outputs_and_grads(name):
    """set_grad_checkpointing(True) really recomputes (fewer saved activations) and changes nothing else."""
    model = build_small(name, fresh=True)  # eval: deterministic norms; checkpointing runs whenever grads are on
    x = small_input(model)
    out0, g0, saved0 = _fwd_bwd(model, x)
    model.set_grad_checkpointing(True)
    out1, g1, saved1 = _fwd_bwd(model, x)
    assert saved1 < saved0
    torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g0.keys() == {n for n, _ in model.named_parameters()}
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)


# parameters that timm's models (and the papers' recipes) keep out of weight decay
NO_DECAY = re.compile(r"(^|\.)(pos_embed\w*|decoder_pos_embed|cls_token|reg_token|mask_token|"
                      r"relative_position_bias_table)$")


def _no_decay(name: str, listed: set[str]) -> bool:
    """bettervit.train.optim's rule: a listed name, or one listed as a module prefix / final name part."""
    return name in listed or any(name.startswith(s + ".") or name.endswith("." + s) for s in listed)


@pytest.mark.parametrize("name", bettervit.list_models(), scope="module")
def test_no_weight_decay(name):
    """Position embeddings, tokens and relative-position tables are listed (as the optimiser matches names), and
    every listed name is one of the model's parameters."""
    model = build_small(name)
    listed = set(model.no_weight_decay())
    params = [n for n, _ in model.named_parameters()]
    missing = [p for p in params if NO_DECAY.search(p) and not _no_decay(p, listed)]
    assert not missing, missing
    stale = [s for s in listed if not any(_no_decay(p, {s}) for p in params)]
    assert listed and not stale, stale


def _groups(model: nn.Module, coarse: bool) -> dict[str, object]:
    """Parameter -> 'stem', a block group id (the regex's captured numbers or its fixed tuple), or None, read from
    group_matcher as timm's ``group_with_matcher`` does (first matching rule wins, ``re.match``)."""
    gm = model.group_matcher(coarse=coarse)
    stem = gm["stem"] if isinstance(gm["stem"], (list, tuple)) else [gm["stem"]]
    blocks = gm["blocks"] if isinstance(gm["blocks"], (list, tuple)) else [(gm["blocks"], None)]
    blocks = [b if isinstance(b, tuple) else (b, None) for b in blocks]
    out = {}
    for n, _ in model.named_parameters():
        if any(re.match(s, n) for s in stem):
            out[n] = "stem"
            continue
        out[n] = None
        for pattern, fixed in blocks:
            m = re.match(pattern, n)
            if m:
                out[n] = tuple(fixed) if fixed is not None else tuple(float(g) for g in m.groups() if g is not None)
                break
    return out


@pytest.mark.parametrize("name", CLASSIFIERS, scope="module")
@pytest.mark.parametrize("coarse", [False, True])
def test_group_matcher(name, coarse):
    """The stem group holds the first conv and the embeddings; the blocks fall into >= 2 groups in depth order;
    only what follows the last block (final norm, head) is left unmatched (timm puts it in the last group)."""
    model = build_small(name)
    groups = _groups(model, coarse)
    names = list(groups)
    first_conv = model.pretrained_cfg["first_conv"] + ".weight"
    assert groups[first_conv] == "stem"
    assert all(groups[n] == "stem" for n in names if re.search(r"(^|\.)pos_embed\w*$|^cls_token$", n))
    block_ids = [groups[n] for n in names if groups[n] not in ("stem", None)]
    assert len(set(block_ids)) >= 2 and block_ids == sorted(block_ids)
    last_matched = max(i for i, n in enumerate(names) if groups[n] is not None)
    unmatched = [i for i, n in enumerate(names) if groups[n] is None]
    assert all(i > last_matched for i in unmatched), [names[i] for i in unmatched]


@pytest.mark.parametrize("name", CLASSIFIERS, scope="module")
def test_param_layer_ids(name):
    """A layer id for every parameter: 0 = stem (first conv), the classifier the last, every id in
    [0, num_layer_ids()) used, non-decreasing in module (depth) order."""
    model = build_small(name, num_classes=3)
    ids = model.param_layer_ids()
    names = [n for n, _ in model.named_parameters()]
    assert list(ids) == names
    L = model.num_layer_ids()
    assert set(ids.values()) == set(range(L))
    assert ids[model.pretrained_cfg["first_conv"] + ".weight"] == 0
    assert all(ids[n] == L - 1 for n, p in model.named_parameters()
               if any(p is q for q in model.get_classifier().parameters()))
    values = list(ids.values())
    assert values == sorted(values)
