"""Reading out what an encoder learned: linear probe, k-NN on pooled features, and pixel baselines.

- ``LinearProbe``: the encoder frozen (always in eval mode), a BatchNorm without affine parameters and a linear
  classifier on its pooled features, as the MAE paper's linear probing (He et al. 2022, appendix A.2: "an extra
  BatchNorm layer without affine transformation" before the head). Only the classifier trains. Its checkpoint is
  a plain classifier: the BatchNorm's running statistics are folded into the linear layer.
- ``knn_top1``: a weighted k-NN classifier on L2-normalised pooled features (cosine similarity), each of the k
  nearest training images voting with weight ``exp(similarity / T)``, T = 0.07, as DINO's k-NN evaluation
  (Caron et al. 2021).
- ``pixel_baselines``: logistic regression and 1-NN on the raw grey pixels (resized to 8x8, the digits' own
  resolution), with scikit-learn: what any learned representation has to beat.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import DataBundle


def classifier_of(model: nn.Module) -> nn.Linear:
    """The model's final linear classifier (``get_classifier()`` or the module named by ``classifier_prefixes``)."""
    if hasattr(model, "get_classifier"):
        fc = model.get_classifier()
    else:
        prefixes = getattr(model, "classifier_prefixes", ())
        if not prefixes:
            raise ValueError(f"{type(model).__name__} names no classifier (classifier_prefixes)")
        fc = model.get_submodule(prefixes[0].rstrip("."))
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear classifier (num_classes=0?)")
    return fc


def pooled_features(model: nn.Module, x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, D): the pooled, normed features the classifier reads (``forward_head(pre_logits=True)``)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


class LinearProbe(nn.Module):
    """Frozen ``encoder`` (a classifier whose head is replaced) -> BatchNorm1d(affine=False) -> Linear."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        dim = classifier_of(encoder).in_features
        self.encoder = encoder.requires_grad_(False).eval()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)  # as the MAE linear probe
        nn.init.zeros_(self.fc.bias)

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, no drop path, whatever the loop asks
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            f = pooled_features(self.encoder, x)
        return self.fc(self.bn(f.float()))

    @torch.no_grad()
    def classifier_state_dict(self) -> dict[str, Tensor]:
        """The encoder's state dict with the BatchNorm folded into its classifier: a plain checkpoint of the model.

        BN (no affine) then Linear is ``W (f - mean) / s + b`` with ``s = sqrt(var + eps)``, i.e. a Linear with
        weight ``W / s`` and bias ``b - (W / s) mean``.
        """
        s = (self.bn.running_var + self.bn.eps).sqrt()  # (D,)
        w = self.fc.weight / s  # (classes, D)
        b = self.fc.bias - w @ self.bn.running_mean
        target = classifier_of(self.encoder)
        if target.weight.shape != w.shape:
            raise ValueError(f"encoder classifier {tuple(target.weight.shape)} does not fit the probe {tuple(w.shape)}")
        keep = (target.weight.data.clone(), target.bias.data.clone())
        target.weight.data.copy_(w)
        target.bias.data.copy_(b)
        sd = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        target.weight.data.copy_(keep[0])  # leave the live module as it was
        target.bias.data.copy_(keep[1])
        return sd


@torch.no_grad()
def extract_features(model: nn.Module, data: DataBundle, split: str, prepare, device: torch.device,
                     batch_size: int = 128, workers: int = 0) -> tuple[Tensor, Tensor]:
    """Pooled features (N, D) float32 on the CPU and labels (N,) of a whole split; ``prepare`` maps a uint8 batch to
    model input (e.g. ``DeviceAugment.eval_batch``)."""
    was = model.training
    model.eval()
    feats, labels = [], []
    for x, y in data.batches(split, list(range(data.size(split))), batch_size, workers):
        feats.append(pooled_features(model, prepare(x.to(device))).float().cpu())
        labels.append(y)
    model.train(was)
    return torch.cat(feats), torch.cat(labels)


def knn_top1(train_f: Tensor, train_y: Tensor, val_f: Tensor, val_y: Tensor, k: int = 20,
             temperature: float = 0.07, num_classes: int | None = None) -> float:
    """Top-1 (percent) of a weighted k-NN vote on cosine similarity (see the module docstring)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    k = min(k, len(train_f))
    sim = F.normalize(val_f, dim=1) @ F.normalize(train_f, dim=1).T  # (N_val, N_train) cosine similarities
    top_sim, top_idx = sim.topk(k, dim=1)  # (N_val, k)
    votes = torch.zeros(len(val_f), num_classes).scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
    return 100.0 * (votes.argmax(1) == val_y).float().mean().item()


def grey_pixels(data: DataBundle, split: str, side: int = 8) -> tuple["object", "object"]:
    """(N, side*side) float64 grey pixels in [0, 1] (area-resized) and (N,) labels, as numpy arrays."""
    xs, ys = [], []
    for x, y in data.batches(split, list(range(data.size(split))), 256):
        g = x.float().mean(1, keepdim=True) / 255  # (B, 1, H, W) grey
        xs.append(F.interpolate(g, size=(side, side), mode="area").flatten(1))  # (B, side*side)
        ys.append(y)
    return torch.cat(xs).double().numpy(), torch.cat(ys).numpy()


def pixel_baselines(data: DataBundle) -> dict[str, float]:
    """Val top-1 (percent) of scikit-learn's logistic regression and 1-NN on raw 8x8 grey pixels of the train split
    (whatever subset the bundle holds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    xt, yt = grey_pixels(data, "train")
    xv, yv = grey_pixels(data, "val")
    lr = LogisticRegression(max_iter=5000).fit(xt, yt)
    nn1 = KNeighborsClassifier(n_neighbors=1).fit(xt, yt)
    return {"pixel_logreg_top1": 100.0 * float((lr.predict(xv) == yv).mean()),
            "pixel_1nn_top1": 100.0 * float((nn1.predict(xv) == yv).mean())}


def digits_pixel_baselines(labels_per_class: int | None = None, seed: int = 0) -> dict[str, float]:
    """``pixel_baselines`` on the digits' own 8x8 pixels (not the upsampled model input), on the same labelled
    subset ``--labels-per-class`` / ``--seed`` select (the subset depends on the labels only, not the image size)."""
    from ..data import build_data

    data = build_data("digits", 8)
    if labels_per_class:
        data = data.with_labels_per_class(labels_per_class, seed)
    return pixel_baselines(data)
