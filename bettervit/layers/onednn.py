"""oneDNN fused kernels for CPU fp32 inference: a linear or convolution together with its activation, or a linear
together with the residual add that follows it, in one pass over memory.

These are PyTorch's private ``torch.ops.mkldnn.*_pointwise`` ops (what Inductor emits on CPU). Models call them only
when ``usable(x)`` holds — CPU, fp32, no autograd, no autocast, not under torch.compile, and the ops exist in this build — and use
their plain modules otherwise, so results are the same to float rounding everywhere. On a 2-core CPU a fused
depthwise conv + GELU is ~3x faster than the two ops apart; a 1x1 conv or linear + GELU ~1.5x.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _available() -> bool:
    try:
        ops = torch.ops.mkldnn
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_convolution_pointwise")
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


AVAILABLE = _available()


def usable(x: Tensor) -> bool:
    return (
        AVAILABLE
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")  # these ops are not autocast-aware: mixed dtypes would meet
        and not torch.compiler.is_compiling()
    )


def linear_act(x: Tensor, weight: Tensor, bias: Tensor | None, act: str = "gelu", algorithm: str = "none") -> Tensor:
    """act(x @ W.T + b); act is "gelu" (algorithm "none" = erf, "tanh" = tanh approximation) or "relu"."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [], algorithm)


def linear_add(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ W.T + b + residual."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")


def conv_act(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, stride: int, groups: int,
    act: str = "gelu", algorithm: str = "none",
) -> Tensor:
    """act(conv2d(x)) with dilation 1."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [padding, padding], [stride, stride], [1, 1], groups, act, [], algorithm
    )
