"""bettervit's models in timm's registry, for code that names a backbone and calls ``timm.create_model``.

Detection and segmentation libraries (Hugging Face transformers' ``TimmBackbone``, segmentation_models_pytorch's
``tu-`` encoders, effdet, mmpretrain's ``TIMMBackbone``) build their backbone with ``timm.create_model(name, ...)``.
``register_timm(prefix="bv_")`` adds every bettervit model to timm's registry under ``prefix + name`` (a prefix,
because several plain names, e.g. ``hiera_tiny_224``, are timm's own); ``timm.create_model("bv_hiera_tiny_224",
features_only=True, out_indices=(1, 2, 3))`` then builds bettervit's model with all of timm's options.

EVA-02 and EVA are plain ViTs (every level at the patch stride); for the consumers that need strides 4, 8, 16, 32
they are also registered as ``prefix + "vitdet_" + name``: the ViTDet trunk and simple feature pyramid of
``bettervit.models.vitdet`` (Li et al. 2022), whose four maps are its four feature levels.

Without editing code: ``python -m bettervit.integrations.timm [--prefix P] script.py [args]`` (or ``-m module``)
runs a program with the hook registered.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import runpy
import sys
from collections import deque
from typing import Any, Callable, Mapping, Sequence

from torch import Tensor, nn

from ..models.base import feature_take_indices
from ..models.vitdet import ViTDetBackbone, vitdet_eva02

log = logging.getLogger(__name__)

_VITDET_FAMILIES = ("eva02", "eva")
_VITDET = "vitdet_"


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ImportError("bettervit's timm hook needs timm: pip install 'bettervit[timm]'") from None
    return timm


class TimmViTDet(ViTDetBackbone):
    """A ViTDet backbone (EVA-02 trunk + simple feature pyramid) with timm's feature API: four levels, the pyramid's
    maps at strides 4, 8, 16, 32; ``forward`` returns them as a list."""

    default_out_indices: tuple[int, ...] = (0, 1, 2, 3)
    pretrained_cfg: dict[str, Any] = {}

    def __init__(self, backbone: nn.Module, out_channels: int = 256) -> None:
        super().__init__(backbone, out_channels)
        if backbone.config.patch_size != 16:
            raise ValueError(f"a ViTDet pyramid at strides 4-32 needs patch_size=16, got {backbone.config.patch_size}")
        self.feature_info = [dict(num_chs=out_channels, reduction=int(self.strides[n]), module=f"pyramid.stages.{i}")
                             for i, n in enumerate(self.names)]
        self.num_features = out_channels

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        return self.forward_intermediates(x, intermediates_only=True)

    def forward_intermediates(
        self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The pyramid's maps of ``indices`` (timm's meaning); with ``intermediates_only=False`` also the trunk's
        last-block map (B, C, H / 16, W / 16) as the final features. Only the requested pyramid stages run."""
        if output_fmt != "NCHW":
            raise ValueError(f"ViTDet maps are NCHW, got output_fmt={output_fmt!r}")
        take, _ = feature_take_indices(len(self.feature_info), indices)
        p = 2 * self.backbone.config.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"ViTDet input height and width must be multiples of {p}, got {tuple(x.shape[-2:])}")
        (feat,) = self.backbone.forward_intermediates(x, indices=1, intermediates_only=True)  # (B, C, h, w)
        maps = [self.pyramid.stages[i](feat) for i in take]
        return maps if intermediates_only else (feat, maps)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 4, prune_norm: bool = False, prune_head: bool = True,
    ) -> list[int]:
        """Nothing to prune (every level comes from the trunk's last block); the absolute indices."""
        return feature_take_indices(len(self.feature_info), indices)[0]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


def _resolve_tag(name: str, pretrained_cfg: Any) -> tuple[str, dict[str, Any] | None]:
    """timm passes a name's weight tag as ``pretrained_cfg`` (a str); a PretrainedCfg becomes bettervit's dict."""
    if isinstance(pretrained_cfg, str):
        return (f"{name}.{pretrained_cfg}" if pretrained_cfg else name), None
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, dict):
        pretrained_cfg = pretrained_cfg.to_dict()
    if pretrained_cfg is not None:
        pretrained_cfg = dict(pretrained_cfg, architecture=name)
    return name, pretrained_cfg


def _place(model: nn.Module, device: Any, dtype: Any) -> nn.Module:
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def _build_model(name: str, forced: bool | str | None, pretrained: Any, pretrained_cfg: Any,
                 pretrained_cfg_overlay: dict[str, Any] | None, cache_dir: Any, kwargs: dict[str, Any]) -> nn.Module:
    """What a registered entry point does for a bettervit model: bettervit's ``create_model``."""
    from .. import factory

    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    kwargs.pop("pretrained_model_args", None)  # timm's record of a hub config's model args; nothing to rebuild
    name, cfg = _resolve_tag(name, pretrained_cfg)
    if forced and not pretrained:
        pretrained = forced
    model = factory.create_model(name, pretrained=pretrained, pretrained_cfg=cfg,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay, cache_dir=cache_dir, **kwargs)
    if hasattr(model, "convert_checkpoint"):  # timm's checkpoint_path: load_state_dict converts upstream formats
        model.register_load_state_dict_pre_hook(_convert_on_load)
    return _place(model, device, dtype)


def _convert_on_load(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: a checkpoint in timm's or the official format, or made at another size, becomes the
    model's keys and shapes (``convert_checkpoint``)."""
    if prefix or not state_dict:
        return
    own = module.state_dict()
    if all(k in own and own[k].shape == v.shape for k, v in state_dict.items()):
        return  # the model's own format: nothing to convert
    converted = module.convert_checkpoint(dict(state_dict))
    state_dict.clear()
    state_dict.update(converted)


def _build_vitdet(name: str, forced: bool | str | None, pretrained: Any, pretrained_cfg: Any,
                  pretrained_cfg_overlay: dict[str, Any] | None, cache_dir: Any, kwargs: dict[str, Any]) -> nn.Module:
    """What a ``vitdet_`` entry point does: an EVA-02 / EVA ViTDet backbone (trunk weights from ``pretrained``).

    kwargs: ``img_size`` (default 1024, the stored position-embedding grid), ``out_channels`` (256), ``vit_depth``
    (the trunk's ``depth``) and any field of the trunk's config.
    """
    from .. import factory

    trunk = name.removeprefix(_VITDET)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    kwargs.pop("pretrained_model_args", None)
    features_only = kwargs.pop("features_only", False)
    out_indices, feature_cls = kwargs.pop("out_indices", None), kwargs.pop("feature_cls", None)
    if kwargs.pop("num_classes", 0) or kwargs.pop("global_pool", ""):
        raise ValueError(f"{name} is a feature backbone: it has no classifier (num_classes must be 0)")
    out_channels, img_size = kwargs.pop("out_channels", 256), kwargs.pop("img_size", 1024)
    if "vit_depth" in kwargs:  # the trunk's depth under a name consumers leave alone (smp takes `depth` for itself)
        kwargs["depth"] = kwargs.pop("vit_depth")
    if kwargs.pop("output_stride", None) not in (None, 32):
        raise ValueError(f"{name} supports only its natural output_stride=32")
    trunk, cfg = _resolve_tag(trunk, pretrained_cfg)  # a weight tag stays on the trunk's name
    cfg = factory.get_pretrained_cfg(trunk) if cfg is None else cfg
    cfg.update(pretrained_cfg_overlay or {})
    if forced and not pretrained:
        pretrained = forced
    source = (cfg.get("file") or True) if pretrained is True else pretrained
    det = vitdet_eva02(trunk, pretrained=source or False, img_size=img_size, out_channels=out_channels, **kwargs)
    model = TimmViTDet(det.backbone, out_channels)
    model.load_state_dict(det.state_dict())  # the pyramid as vitdet_eva02 initialised it
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    model.pretrained_cfg = {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier", "pool_size")}
    model.pretrained_cfg.update(architecture=name, input_size=[det.backbone.config.in_chans, h, w],
                                first_conv="backbone.patch_embed.proj")
    model = factory.wrap_features(model, features_only, out_indices, feature_cls)
    return _place(model, device, dtype)


def _timm_cfg(timm: Any, arch: str, cfg: dict[str, Any]) -> Any:
    """bettervit's pretrained-config dict as timm's ``PretrainedCfg`` (fields timm has no name for are left out)."""
    fields = {f.name for f in dataclasses.fields(timm.models.PretrainedCfg)}
    out = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in fields}
    out["architecture"] = arch
    return timm.models.PretrainedCfg(**out)


def _default_cfg(timm: Any, name: str, pname: str) -> Any:
    """timm's ``DefaultCfg`` for a registered name: every released tag of the bettervit model (default first)."""
    from .. import factory

    arch = name.removeprefix(_VITDET)
    tags = list(factory._tags(arch))
    default = factory.split_name(factory.get_entry(arch).weights or "")[1]
    if default in tags:
        tags.remove(default)
        tags.insert(0, default)
    if not tags:  # no released weights: one untagged config
        cfg = _timm_cfg(timm, pname, factory.get_pretrained_cfg(arch))
        return timm.models.DefaultCfg(tags=deque([""]), cfgs={"": cfg})
    cfgs = {t: _timm_cfg(timm, pname, factory.get_pretrained_cfg(f"{arch}.{t}")) for t in tags}
    return timm.models.DefaultCfg(tags=deque(tags), cfgs=cfgs, is_pretrained=True)


def _names() -> list[tuple[str, Callable[..., nn.Module]]]:
    """(bettervit name, builder) for every model the hook registers."""
    from .. import factory  # noqa: F401  (importing the factory fills the registry)
    from ..registry import REGISTRY

    out = [(n, _build_model) for n in REGISTRY]
    out += [(_VITDET + n, _build_vitdet) for n, e in REGISTRY.items() if e.family in _VITDET_FAMILIES]
    return out


def _entrypoint(name: str, pname: str, builder: Callable[..., nn.Module], forced: bool | str | None) -> Callable:
    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                   cache_dir: Any = None, **kwargs: Any) -> nn.Module:
        return builder(name, forced, pretrained, pretrained_cfg, pretrained_cfg_overlay, cache_dir, kwargs)

    from . import bettervit_timm

    entrypoint.__name__ = entrypoint.__qualname__ = pname
    entrypoint.__module__ = bettervit_timm.__name__
    entrypoint.__doc__ = f"bettervit's {name} (registered by bettervit.register_timm)."
    entrypoint.bettervit_name = name  # type: ignore[attr-defined]
    entrypoint.bettervit_forced = forced  # type: ignore[attr-defined]
    return entrypoint


def register_timm(prefix: str = "bv_", *, pretrained: bool | Mapping[str, str] = False) -> list[str]:
    """Register every bettervit model in timm's registry as ``prefix + name``; the names now reachable, sorted.

    Idempotent (a second call with the same arguments changes nothing); a name timm (or anyone else) already has is
    never overwritten: it is skipped and logged. ``pretrained``: weights the entry points load even when the caller
    asks for none (transformers' ``TimmBackbone`` always builds with ``pretrained=False``): ``True`` for every
    model's default released weights (through the hub cache, offline once cached), or ``{bettervit name: local file
    or hub id}`` for some. Raises ImportError (one line) without timm, ValueError for a prefix timm cannot parse.
    """
    timm = _import_timm()
    if not isinstance(prefix, str) or any(c in prefix for c in ".:/ "):
        raise ValueError(f"prefix must be a string without '.', ':', '/' or spaces (timm splits names there), "
                         f"got {prefix!r}")
    from . import bettervit_timm

    registered = []
    for name, builder in _names():
        pname = prefix + name
        forced = pretrained.get(name) if isinstance(pretrained, Mapping) else (True if pretrained else None)
        if timm.is_model(pname):
            fn = timm.models.model_entrypoint(pname)
            if getattr(fn, "bettervit_name", None) != name:
                log.info("timm already has a model %r; not overwritten", pname)
                continue
            if fn.bettervit_forced != forced:
                raise ValueError(f"{pname} is registered already with pretrained={fn.bettervit_forced!r}; "
                                 f"use another prefix for pretrained={forced!r}")
            registered.append(pname)
            continue
        bettervit_timm.default_cfgs[pname] = _default_cfg(timm, name, pname)
        timm.models.register_model(_entrypoint(name, pname, builder, forced))
        registered.append(pname)
    return sorted(registered)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bettervit.integrations.timm [--prefix P] [--pretrained] (script.py | -m module) [args ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bettervit.integrations.timm",
        description="Run a Python program with bettervit's models registered in timm under a prefix.")
    parser.add_argument("--prefix", default="bv_", help="name prefix in timm's registry (default: bv_)")
    parser.add_argument("--pretrained", action="store_true",
                        help="entry points load the default released weights even when asked for none")
    parser.add_argument("-m", dest="module", help="run a module (as python -m) instead of a script")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="script.py and its arguments (or the module's)")
    args = parser.parse_args(argv)
    if not args.module and not args.target:
        parser.error("expected a script (or -m module) to run")
    try:
        register_timm(args.prefix, pretrained=args.pretrained)
    except (ImportError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    if args.module:
        sys.argv = [args.module, *args.target]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(args.target)
        runpy.run_path(args.target[0], run_name="__main__")


if __name__ == "__main__":
    main()
