"""MAE pretraining for Hiera (Ryali et al., ICML 2023; MAE: He et al., CVPR 2022).

Hiera's encoder never sees masked tokens: whole mask units (8x8 tokens = 32x32 pixels) are sampled away, their
pixels are zeroed before the 7x7 patch conv (its kernel overlaps unit borders), and only the visible units' tokens
enter the blocks. Because the token order keeps every mask unit contiguous (see ``bettervit.models.hiera.unroll``),
dropping a unit is dropping a run of tokens, and pooling and mask-unit attention work unchanged on what is left.

The encoder pools twice (q_pool=2), so each visible unit ends as 2x2 tokens at stride 16. Stages 1 and 2 are
fused into that resolution by strided convolutions per unit and added to the last stage's output ("multi-scale
fusion"), then normed. A light decoder (512-d, 8 blocks, 16 heads, global attention) fills the masked units with a
learned mask token and predicts each 16x16 pixel patch, normalised by its own mean and variance; the loss is the
MSE on the masked patches only.

Video (the paper's Kinetics MAE, ``mae_hiera_*_16x224``): the same model over clips. Mask units are 1 x 8 x 8
tokens, i.e. 2 frames x 32 x 32 pixels, sampled over the (t, u, v) unit grid with ratio 0.9 (the paper's video
default); the fusion convolutions are 3-D with a temporal kernel of 1, the decoder attends over all (t, h/16, w/16)
tokens with one joint position embedding, and each prediction token reconstructs the *first* frame of its 2-frame
slot (time-strided targets, as the official ``get_pixel_label_3d``), its pixels flattened (y, x, c).

The variants (``mae_hiera_*``) are registered with the other models, in bettervit/models/mae_hiera.py.

Layout follows facebookresearch/mae: ``forward_encoder`` / ``forward_decoder`` / ``forward_loss``. Parameter names
equal the official ``hiera-transformer`` MAE checkpoints, so ``mae_hiera_*_224.pth`` and ``mae_hiera_*_16x224.pth``
load directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers.pos_embed import resample_abs_pos_embed
from ..models.hiera import Hiera, HieraBlock, HieraConfig, reroll_units, resample_temporal, resize_pos_embeds
from ..models.base import img_size_hw


@dataclass
class MAEHieraConfig(HieraConfig):
    q_pool: int = 2  # the MAE encoder pools twice; prediction tokens are at stride 16
    num_classes: int = 0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    norm_pix_loss: bool = True  # targets: each patch normalised by its own mean and variance
    mask_ratio: float = 0.6
    decoder_heads: int | None = None  # older name of decoder_num_heads; when given it sets decoder_num_heads

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder_heads is not None:
            self.decoder_num_heads, self.decoder_heads = self.decoder_heads, None


class MAEOutput(NamedTuple):
    loss: Tensor  # scalar: MSE over the masked patches
    pred: Tensor  # (B, L, p*p*C) predictions for every 16x16 patch, raster order, values (c, y, x); video (y, x, c)
    target: Tensor  # (B, L, p*p*C) the (normalised) pixels of every patch, same layout
    mask: Tensor  # (B, units) bool, True = VISIBLE (kept), False = masked (as the official Hiera code)


def random_unit_mask(batch: int, units: int, mask_ratio: float, device=None, generator=None) -> Tensor:
    """Sample which mask units each image keeps.

    Mask convention (the one used everywhere in this file, and by the official Hiera code, opposite to the original
    MAE): ``True`` = the unit is **visible** (kept, fed to the encoder), ``False`` = masked (predicted). Every image
    keeps the same number of units, ``int(units * (1 - mask_ratio))``, so visible tokens stack into a dense batch.
    """
    keep = int(units * (1 - mask_ratio))
    if not 0.0 <= mask_ratio < 1.0 or keep < 1:
        raise ValueError(f"mask_ratio must leave at least one of {units} mask units visible, got {mask_ratio}")
    noise = torch.rand(batch, units, device=device, generator=generator)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each unit's noise: the `keep` smallest are kept
    return ranks < keep


class MaskedAutoencoderHiera(Hiera):
    """Hiera encoder + multi-scale fusion + MAE decoder. ``forward(x, mask_ratio)`` -> :class:`MAEOutput`."""

    classifier_prefixes = ()

    def __init__(self, config: MAEHieraConfig) -> None:
        super().__init__(config)
        cfg = config
        dims = [blk.dim_out for blk in self.blocks]
        enc_dim = dims[-1]
        self.encoder_norm = nn.LayerNorm(enc_dim, eps=cfg.norm_eps)
        # tokens per mask-unit side at the end of the encoder (2 at the default 8 / 2**2)
        self.final_unit = cfg.mask_unit_size // cfg.q_stride**cfg.q_pool
        h, w = cfg.token_grid
        self.final_grid = (h // cfg.q_stride**cfg.q_pool, w // cfg.q_stride**cfg.q_pool)  # prediction grid (16 px)
        self.units_grid = (h // cfg.mask_unit_size, w // cfg.mask_unit_size)  # mask units per column / row
        self.frames_t = cfg.frames_t if cfg.is_video else 1  # temporal tokens (and unit rows): 1 for images

        # stage s (s < q_pool) sees units of mask_unit_size / q_stride**s tokens; a conv with kernel = stride
        # brings them to final_unit x final_unit, then they are summed with the last stage. Video: the same conv
        # in 3-D with a temporal kernel of 1 (a unit is one temporal token thick), as the official model.
        self.multi_scale_fusion_heads = nn.ModuleList()
        for s, end in enumerate(cfg.stage_ends[: cfg.q_pool]):
            k = cfg.mask_unit_size // cfg.q_stride**s // self.final_unit
            conv = (nn.Conv3d(dims[end], enc_dim, kernel_size=(1, k, k), stride=(1, k, k)) if cfg.is_video else
                    nn.Conv2d(dims[end], enc_dim, kernel_size=k, stride=k))
            self.multi_scale_fusion_heads.append(conv)

        self.decoder_embed = nn.Linear(enc_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        # raster over the prediction grid, (t,) h/16, w/16
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.frames_t * math.prod(self.final_grid), cfg.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            HieraBlock(cfg.decoder_dim, cfg.decoder_dim, cfg.decoder_num_heads, mlp_ratio=cfg.mlp_ratio, eps=cfg.norm_eps)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=cfg.norm_eps)
        self.pred_stride = cfg.patch_stride * cfg.q_stride**cfg.q_pool  # 16: pixels per predicted patch side
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.pred_stride**2 * cfg.in_chans)
        self._init_mae_weights()

    def _make_head(self) -> None:  # the MAE model has no classifier
        self.head = None

    def _init_mae_weights(self) -> None:
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight.data  # like a Linear over the flattened kernel (as MAE)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    # --- MAE ----------------------------------------------------------------------------------------------------
    def _check(self, x: Tensor, fixed: tuple[int, ...] | None = None) -> None:
        # the decoder's position embedding and the mask fix the input size
        cfg = self.config
        hw = img_size_hw(cfg.img_size)
        super()._check(x, fixed=(cfg.num_frames, *hw) if cfg.is_video else hw)

    @property
    def num_units(self) -> int:
        """Mask units of the build size, raster (t,) u, v."""
        return self.frames_t * math.prod(self.units_grid)

    def random_mask(self, x: Tensor, mask_ratio: float, generator: torch.Generator | None = None) -> Tensor:
        """(B, units) bool, True = visible. See :func:`random_unit_mask`."""
        return random_unit_mask(x.shape[0], self.num_units, mask_ratio, device=x.device, generator=generator)

    def forward_encoder(self, x: Tensor, mask: Tensor) -> Tensor:
        """Images + mask (True = visible) -> fused latent (B, n_visible, u, u, C_enc), u = final unit side (2)."""
        cfg = self.config
        take = set(range(cfg.q_pool)) | {len(cfg.depths) - 1}
        _, outs = self.forward_tokens(x, visible=mask, take=take)
        n_vis = int(mask[0].sum())
        fused = 0.0
        for stage, t in outs:
            units = reroll_units(t, n_vis, self._levels_after(stage), cfg.q_stride)  # (B, n_vis, m, m, C)
            if stage < cfg.q_pool:
                B, n, m, _, C = units.shape
                y = units.reshape(B * n, m, m, C).permute(0, 3, 1, 2)  # (B*n, C, m, m)
                if cfg.is_video:  # a unit as a one-frame clip for the (1, k, k) conv: (B*n, C, 1, m, m)
                    y = self.multi_scale_fusion_heads[stage](y.unsqueeze(2)).squeeze(2)
                else:
                    y = self.multi_scale_fusion_heads[stage](y)
                units = y.permute(0, 2, 3, 1).reshape(B, n, self.final_unit, self.final_unit, -1)
            fused = fused + units
        return self.encoder_norm(fused)

    def forward_decoder(self, latent: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Latent of the visible units -> predictions (B, L, p*p*C) in raster order, and the patch-level mask
        (B, L) bool, True = visible."""
        cfg = self.config
        x = self.decoder_embed(latent)  # (B, n_vis, u, u, D)
        B, D, u, t = x.shape[0], x.shape[-1], self.final_unit, self.frames_t
        mh, mw = self.units_grid
        full = self.mask_token.to(x.dtype).expand(B, self.num_units, u * u, D).clone()  # (B, units, u*u, D)
        full[mask] = x.reshape(-1, u * u, D)  # row-major over (image, visible unit), the order of mask's True
        # units grid -> raster tokens: (B, t, mh, mw, uy, ux, D) -> (B, t, mh, uy, mw, ux, D) (images: t = 1)
        x = full.view(B, t, mh, mw, u, u, D).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, t * mh * u * mw * u, D)
        patch_visible = mask.view(B, t, mh, 1, mw, 1).expand(B, t, mh, u, mw, u).reshape(B, -1)
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = self.run_block(block, x)
        return self.decoder_pred(self.decoder_norm(x)), patch_visible

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, C*p*p) raster patches, each flattened as (c, y, x) like the official targets.

        Video (B, C, T, H, W): the first frame of every ``patch_stride_t`` frames (the official time-strided
        targets) -> (B, t*h*w, p*p*C) raster (t, h, w), each patch flattened (y, x, c) as the official
        ``get_pixel_label_3d`` does (its channel axis moved last, unlike the 2-D targets)."""
        p = self.pred_stride
        if self.config.is_video:
            x = x[:, :, :: self.config.patch_stride_t]  # (B, C, t, H, W)
            B, C, t, H, W = x.shape
            x = x.reshape(B, C, t, H // p, p, W // p, p).permute(0, 2, 3, 5, 4, 6, 1)  # (B, t, h, w, p, p, C)
            return x.reshape(B, t * (H // p) * (W // p), p * p * C)
        B, C, H, W = x.shape
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """Inverse of :meth:`patchify`: (B, L, C*p*p) -> (B, C, H, W); video -> (B, C, t, H, W), the target
        frames (one per temporal token)."""
        B, L, _ = patches.shape
        p, C, t = self.pred_stride, self.config.in_chans, self.frames_t
        h, w = self.final_grid
        if self.config.is_video:
            x = patches.reshape(B, t, h, w, p, p, C).permute(0, 6, 1, 2, 4, 3, 5)  # (B, C, t, h, p, w, p)
            return x.reshape(B, C, t, h * p, w * p)
        x = patches.reshape(B, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
        return x.reshape(B, C, h * p, w * p)

    def forward_loss(self, x: Tensor, pred: Tensor, patch_visible: Tensor) -> tuple[Tensor, Tensor]:
        """MSE between predictions and (per-patch normalised) pixels, on masked patches only -> (loss, target)."""
        target = self.patchify(x)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the official code
            target = (target - mean) / (var + 1e-6).sqrt()
        masked = ~patch_visible
        loss = (pred[masked] - target[masked]).pow(2).mean()
        return loss, target

    def forward(self, x: Tensor, mask_ratio: float | None = None, mask: Tensor | None = None) -> MAEOutput:
        """Images (B, C, H, W) or clips (B, C, T, H, W) -> :class:`MAEOutput`. ``mask`` (B, units) bool, True =
        visible, units raster (t,) u, v, overrides sampling; each image must keep the same number of units."""
        self._check(x)
        if mask is None:
            mask = self.random_mask(x, self.config.mask_ratio if mask_ratio is None else mask_ratio)
        elif mask.shape != (x.shape[0], self.num_units) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {(x.shape[0], self.num_units)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        elif not (mask.sum(1) == mask[0].sum()).all() or not mask[0].any():
            raise ValueError("mask must keep the same, non-zero number of mask units in every image")
        latent = self.forward_encoder(x, mask)
        pred, patch_visible = self.forward_decoder(latent, mask)
        loss, target = self.forward_loss(x, pred, patch_visible)
        return MAEOutput(loss, pred, target, mask)

    # --- classifier-only API does not apply ---------------------------------------------------------------------
    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise ValueError("the MAE model has no classifier head; build hiera_* and load this checkpoint into it")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        raise ValueError("the MAE model has no classifier head; build hiera_* and load this checkpoint into it")

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "decoder_pos_embed", "mask_token"}


    def convert_checkpoint(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Official MAE-Hiera keys are ours. Encoder-only files map onto the encoder: timm's ``hiera_*_224.mae``
        (and any timm / bettervit Hiera classifier) keeps the MAE encoder norm at ``head.norm.``, an official
        hiera-transformer classifier at ``norm.``; classifiers (``head.fc.`` / ``head.projection.``) are dropped.
        Position embeddings are resized to this img_size."""
        out = {}
        for k, v in state_dict.items():
            if k.startswith(("head.fc.", "head.projection.")):
                continue
            if k.startswith("head.norm."):
                k = "encoder_norm." + k.removeprefix("head.norm.")
            elif k.startswith("norm."):
                k = "encoder_norm." + k.removeprefix("norm.")
            out[k] = v
        # the checkpoint's own grids, read before the encoder tables are resized: (t,) and the square stride-4 side
        old_t = out["pos_embed_temporal"].shape[1] if "pos_embed_temporal" in out else None
        spatial = out.get("pos_embed_spatial")
        resize_pos_embeds(out, self.config)
        n_dec = self.frames_t * math.prod(self.final_grid)
        if "decoder_pos_embed" in out and out["decoder_pos_embed"].shape[1] != n_dec:
            if not self.config.is_video:
                out["decoder_pos_embed"] = resample_abs_pos_embed(out["decoder_pos_embed"], self.final_grid)
            elif spatial is not None and old_t is not None:
                out["decoder_pos_embed"] = self._resize_video_decoder_pos(out["decoder_pos_embed"], old_t, spatial)
        return out

    def _resize_video_decoder_pos(self, pos: Tensor, old_t: int, old_spatial: Tensor) -> Tensor:
        """The video decoder's joint (1, t * h * w, C) table (raster t, h, w at stride 16) -> this model's grid. The
        old grid comes from the same checkpoint's encoder tables (t temporal tokens; a square stride-4 spatial grid,
        16 / 4 = 4x finer than the decoder's). Spatial: bicubic per temporal slice, as the encoder's; temporal:
        linear per position, as ``pos_embed_temporal``."""
        side = math.isqrt(old_spatial.shape[1]) // (self.pred_stride // self.config.patch_stride)  # old h = w
        if old_t * side * side != pos.shape[1]:
            raise ValueError(f"decoder_pos_embed has {pos.shape[1]} tokens, not the {old_t}x{side}x{side} grid the "
                             f"checkpoint's encoder position embeddings imply")
        C = pos.shape[-1]
        x = torch.cat([resample_abs_pos_embed(f, self.final_grid, (side, side))  # one temporal slice at a time
                       for f in pos.reshape(old_t, 1, side * side, C)])  # (t0, h*w, C)
        if old_t != self.frames_t:  # (h*w, t0, C) -> (h*w, t, C): each spatial position is one "batch" row
            x = resample_temporal(x.transpose(0, 1), self.frames_t).transpose(0, 1)
        return x.reshape(1, -1, C)


#: MAE-only parts: an encoder-only checkpoint leaves them at their fresh initialisation
MAE_ONLY_PREFIXES = ("decoder_", "mask_token", "multi_scale_fusion_heads.")


def load_mae_init(model: MaskedAutoencoderHiera, state_dict: dict[str, Tensor], source: str = "checkpoint") -> list[str]:
    """Continue MAE pretraining from ``state_dict``; returns the parameter names that start fresh.

    A full MAE checkpoint (official ``mae_hiera_*_224.pth`` -- ``{"model_state": ...}`` --, or a bettervit MAE run)
    must fit exactly, decoder included. An encoder-only one (timm's ``hiera_*_224.mae``, a Hiera classifier) loads
    into the encoder; the fusion heads and decoder keep their initialisation (and the encoder norm too, if the file
    has none). Anything else that is missing, unexpected or misshapen is a ValueError naming it.
    """
    from .. import weights

    sd = model.convert_checkpoint(dict(state_dict))
    if any(k.startswith(MAE_ONLY_PREFIXES) for k in sd):
        weights.load_into(model, state_dict, source=source)
        return []
    own = model.state_dict()
    fresh = sorted(k for k in own if k not in sd and (k.startswith(MAE_ONLY_PREFIXES) or k.startswith("encoder_norm.")))
    missing = sorted(k for k in own if k not in sd and k not in fresh)
    unexpected = sorted(k for k in sd if k not in own)
    bad = sorted(k for k in sd if k in own and sd[k].shape != own[k].shape)
    if missing or unexpected or bad:
        parts = [f"{what} {len(ks)} key(s): {', '.join(ks[:5])}" for what, ks in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch of", bad)) if ks]
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)
    return fresh


@torch.no_grad()
def reconstruct_images(model: MaskedAutoencoderHiera, x: Tensor, out: MAEOutput) -> Tensor:
    """The MAE paper's reconstruction: visible patches pasted from ``x``, masked ones from the predictions. (B, C, H, W)
    in the units of ``x``; video: (B, C, t, H, W), the target frames ``x[:, :, ::patch_stride_t]``.

    With ``norm_pix_loss`` the predictions are per-patch normalised pixels; each predicted patch is mapped back with
    the mean and (unbiased) variance of the *original* patch at its place, as the MAE paper's figures and its
    visualisation code do -- so the brightness and contrast of a masked patch come from the input, its structure
    from the model.
    """
    target = model.patchify(x)  # raw pixels (B, L, C*p*p)
    B, L, _ = target.shape
    (mh, mw), u, t = model.units_grid, model.final_unit, model.frames_t
    visible = out.mask.view(B, t, mh, 1, mw, 1).expand(B, t, mh, u, mw, u).reshape(B, L, 1)  # (B, L, 1) patch-level
    pred = out.pred.float()
    if model.config.norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1) per original patch
        std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        pred = pred * std + mean
    return model.unpatchify(torch.where(visible, target, pred.to(target.dtype)))


def patch_visibility(model: MaskedAutoencoderHiera, mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, units) bool mask (True = visible) -> (B, 1, H, W) float, 1 on visible pixels; video (B, 1, t, H, W),
    one frame per temporal token."""
    (mh, mw), t = model.units_grid, model.frames_t
    v = mask.view(-1, t, mh, mw).float()  # (B, t, mh, mw)
    v = torch.nn.functional.interpolate(v, size=tuple(size), mode="nearest")  # (B, t, H, W)
    return v.unsqueeze(1) if model.config.is_video else v
