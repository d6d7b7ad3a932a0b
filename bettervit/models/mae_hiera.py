"""The MAE pretraining models with a Hiera encoder (``mae_hiera_*``; the model and its loss:
:class:`bettervit.pretrain.mae.MaskedAutoencoderHiera`), registered here with the other model families.

The official MAE checkpoints (dl.fbaipublicfiles.com/hiera/mae_hiera_*.pth) are not on the Hugging Face hub, so
there is no default hub id: pass the downloaded .pth as ``pretrained=``. Parameter names equal theirs.
"""
from __future__ import annotations

import functools

from ..pretrain.mae import MAEHieraConfig, MaskedAutoencoderHiera
from ..registry import register_model, register_variant
from .hiera import OFFICIAL_URL, SIZES

#: image MAE models: name -> encoder size (224 px, mask ratio 0.6)
IMAGE_VARIANTS: dict[str, str] = {
    "mae_hiera_tiny_224": "tiny",
    "mae_hiera_small_224": "small",
    "mae_hiera_base_224": "base",
    "mae_hiera_base_plus_224": "base_plus",
    "mae_hiera_large_224": "large",
    "mae_hiera_huge_224": "huge",
}
for _name, _size in IMAGE_VARIANTS.items():
    register_variant(MaskedAutoencoderHiera, _name, functools.partial(MAEHieraConfig, **SIZES[_size]),
                     f"MAE pretraining model with a Hiera-{_size} encoder at 224x224.", family="hiera")

#: video MAE models (Kinetics): name -> encoder size (16 frames at 224 px, mask ratio 0.9, the paper's video default)
VIDEO_VARIANTS: dict[str, str] = {
    "mae_hiera_base_16x224": "base",
    "mae_hiera_base_plus_16x224": "base_plus",
    "mae_hiera_large_16x224": "large",
    "mae_hiera_huge_16x224": "huge",
}
for _name, _size in VIDEO_VARIANTS.items():
    register_variant(
        MaskedAutoencoderHiera, _name,
        functools.partial(MAEHieraConfig, **SIZES[_size], num_frames=16, mask_ratio=0.9),
        f"MAE video pretraining model with a Hiera-{_size} encoder, 16 frames at 224x224, mask ratio 0.9.",
        family="hiera",
        pretrained_cfg=dict(url=OFFICIAL_URL.format(name=_name), tag="mae_k400", input_size=[3, 16, 224, 224],
                            license="cc-by-nc-4.0", paper_ids="arXiv:2306.00989"),
    )


@register_model(MaskedAutoencoderHiera, family="hiera")
def mae_hiera_nano_video() -> MAEHieraConfig:
    """MAE with the hiera_nano_video encoder (8 frames of 64 px: 4 x 2 x 2 = 16 mask units) and mae_hiera_nano's
    decoder, for demos and tests. Mask ratio 0.75 (4 visible units): 0.9 would leave one unit of sixteen."""
    return MAEHieraConfig(
        embed_dim=32, num_heads=1, depths=(1, 1, 2, 1), img_size=64, num_frames=8, decoder_dim=64, decoder_depth=2,
        decoder_num_heads=2, mask_ratio=0.75,
    )


@register_model(MaskedAutoencoderHiera, family="hiera")
def mae_hiera_nano() -> MAEHieraConfig:
    """MAE with the hiera_nano encoder and a 64-d, 2-block, 2-head decoder at 64 px, for demos and tests.

    At 64 px the image holds only 2x2 mask units (of 32 px); masking half of them (2 visible) gave better features
    on the digits than 0.6 (which leaves 1 visible unit): benchmarks/README.md, few-label table."""
    return MAEHieraConfig(
        embed_dim=32, num_heads=1, depths=(1, 1, 2, 1), img_size=64, decoder_dim=64, decoder_depth=2, decoder_num_heads=2,
        mask_ratio=0.5,
    )
