"""oneDNN kernels for CPU fp32 inference, used only by the ``bettervit.optimize`` pass.

These are PyTorch's ``torch.ops.mkldnn`` ops (what Inductor emits on CPU when it freezes a model):
- a linear on a weight reordered once into oneDNN's blocked layout (on the transformer shapes here 10-25% more
  GFLOP/s than ``F.linear``, whose BLAS call repacks the weight on every call), optionally with the activation
  (GELU, SiLU) or the elementwise op with a second tensor (residual add, gating product) that follows it fused in,
  so the wide hidden activation is written once instead of three times;
- a convolution with its activation fused in (a depthwise conv + GELU ~3x faster than the two apart).

:class:`PackedLinear` replaces an ``nn.Linear``: it holds only the packed weight (the plain one is dropped, so the
optimized model keeps one copy of each weight) and writes the plain weight back out in ``state_dict``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def available() -> bool:
    """True when this torch build has the oneDNN ops the pass uses."""
    try:
        ops = torch.ops.mkldnn
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_convolution_pointwise")
            and hasattr(ops, "_reorder_linear_weight")
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


class PackedLinear(nn.Module):
    """``y = x @ W.T + b`` on a oneDNN-packed ``W`` (CPU, fp32, inference only).

    ``act(x, "gelu", "tanh"|"none")``, ``act(x, "swish")``: the activation fused into the matmul;
    ``add(x, r)``: ``linear(x) + r``; ``mul(x, g)``: ``linear(x) * g`` — each one kernel, one pass over the output.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: tuple[int, int] | None = None) -> "PackedLinear":
        """Pack ``linear`` (only output rows ``rows[0]:rows[1]`` if given, e.g. one half of a packed SwiGLU fc1)."""
        w, b = linear.weight, linear.bias
        if rows is not None:
            w = w[rows[0]:rows[1]]
            b = None if b is None else b[rows[0]:rows[1]]
        return cls(w, b)

    def weight_dense(self) -> Tensor:
        """The plain (out, in) weight, unpacked (a new tensor)."""
        return self.packed.to_dense()

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def act(self, x: Tensor, act: str, algorithm: str = "") -> Tensor:
        """act(linear(x)); act is "gelu" (algorithm "none" = erf, "tanh" = tanh approximation), "swish" or "relu"."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, act, [], algorithm)

    def add(self, x: Tensor, residual: Tensor) -> Tensor:
        """linear(x) + residual."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")

    def mul(self, x: Tensor, other: Tensor) -> Tensor:
        """linear(x) * other (e.g. a gated unit's value branch times its gate)."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "mul")

    # the packed tensor is opaque (no storage): state_dict and deepcopy go through the plain weight
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: ANN001
        destination[prefix + "weight"] = self.weight_dense()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def __deepcopy__(self, memo: dict) -> "PackedLinear":
        return PackedLinear(self.weight_dense(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def linear_act(x: Tensor, linear: nn.Module, act: str, algorithm: str = "") -> Tensor:
    """act(linear(x)) for a PackedLinear (fused) or a plain nn.Linear (reference math)."""
    if isinstance(linear, PackedLinear):
        return linear.act(x, act, algorithm)
    y = linear(x)
    if act == "gelu":
        return F.gelu(y, approximate="tanh" if algorithm == "tanh" else "none")
    if act == "swish":
        return F.silu(y)
    if act == "relu":
        return F.relu(y)
    return y


def conv_act(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, stride: int, groups: int,
    act: str = "gelu", algorithm: str = "none",
) -> Tensor:
    """act(conv2d(x)) with dilation 1, one oneDNN kernel."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [padding, padding], [stride, stride], [1, 1], groups, act, [], algorithm
    )


def pack_linears(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` under ``module`` by a :class:`PackedLinear` (in place); returns ``module``."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear.from_linear(child))
        else:
            pack_linears(child)
    return module
