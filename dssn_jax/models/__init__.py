"""Flax (linen) base classifiers for smoothing.

Every model maps images (B, H, W, C) with values in [0, 1] to float32 logits
(B, num_classes). It normalizes its input itself, `(x - mean) / std` per
channel, so noise is added in pixel space before normalization. Variables are
`{'params', 'batch_stats'}`; `model.apply(variables, x, train=False)` uses the
running BatchNorm statistics, and `train=True` uses batch statistics and must
be called with `mutable=['batch_stats']`.

  model = create_model("wrn_40_2", num_classes=10,
                       mean=(0.4914, 0.4822, 0.4465),
                       std=(0.2470, 0.2435, 0.2616))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  logits = model.apply(variables, x)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dssn_jax.models.cifar_resnet import BasicBlock
from dssn_jax.models.cifar_resnet import CifarResNet
from dssn_jax.models.dncnn import DnCNN
from dssn_jax.models.resnet import Bottleneck
from dssn_jax.models.resnet import ResNet
from dssn_jax.models.small_cnn import SmallCNN
from dssn_jax.models.wide_resnet import WideBasicBlock
from dssn_jax.models.wide_resnet import WideResNet

# name -> (module class, architecture keyword arguments).
_ARCHITECTURES = {
    "small_cnn": (SmallCNN, {}),  # Fashion-MNIST, 28x28x1.
    "wrn_40_2": (WideResNet, {"depth": 40, "widen_factor": 2}),  # CIFAR-10.
    "resnet110": (CifarResNet, {"depth": 110}),  # CIFAR-10, Cohen et al.
    # CIFAR-10, Idelbayev's option-A shortcuts (the authors' rs4a code).
    "resnet110_zero_pad": (CifarResNet, {"depth": 110, "shortcut": "zero_pad"}),
    "resnet50": (ResNet, {"stage_sizes": (3, 4, 6, 3)}),  # ImageNet.
}

MODEL_NAMES = tuple(_ARCHITECTURES)
# Denoisers map noisy images to images of the same shape (denoised smoothing:
# the smoothed classifier is argmax f(D(x~)), README "Denoised smoothing").
DENOISER_NAMES = ("dncnn",)


def create_model(
    name: str,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: Any = jnp.float32,
) -> nn.Module:
  """Builds a base classifier by name.

  Args:
    name: one of `MODEL_NAMES`: "small_cnn" (28x28x1), "wrn_40_2" (32x32x3),
      "resnet110" and "resnet110_zero_pad" (32x32x3), "resnet50" (ImageNet,
      224x224x3).
    num_classes: number of output logits.
    mean: per-channel input mean in [0, 1] pixel units (1 or C values).
    std: per-channel input standard deviation in the same units.
    dtype: compute dtype, e.g. jnp.bfloat16 on accelerators. Params stay
      float32 and logits are float32 whatever the compute dtype.

  Returns:
    An unbound `flax.linen.Module`.

  Raises:
    ValueError: for an unknown name, a non-positive `num_classes` or a
      non-positive std.
  """
  if name not in _ARCHITECTURES:
    raise ValueError(
        f"Unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}."
    )
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}.")
  mean = tuple(float(m) for m in mean)
  std = tuple(float(s) for s in std)
  if not mean or not std:
    raise ValueError("mean and std must not be empty.")
  if min(std) <= 0:
    raise ValueError(f"std must be positive, got {std}.")
  cls, kwargs = _ARCHITECTURES[name]
  return cls(num_classes=num_classes, mean=mean, std=std, dtype=dtype, **kwargs)


def create_denoiser(
    name: str,
    *,
    channels: int,
    depth: int,
    width: int,
    dtype: Any = jnp.float32,
) -> nn.Module:
  """Builds a denoiser by name.

  Args:
    name: one of `DENOISER_NAMES` ("dncnn").
    channels: image channels C (1 or 3); input and output are (B, H, W, C)
      in [0, 1] pixel units.
    depth: number of convolutions (at least 2).
    width: channels of the hidden convolutions (positive).
    dtype: compute dtype; params and outputs stay float32.

  Returns:
    An unbound `flax.linen.Module`.

  Raises:
    ValueError: for an unknown name or a bad depth, width or channels.
  """
  if name not in DENOISER_NAMES:
    raise ValueError(
        f"Unknown denoiser {name!r}; known denoisers: "
        f"{', '.join(DENOISER_NAMES)}."
    )
  if depth < 2 or width < 1 or channels < 1:
    raise ValueError(
        f"A DnCNN needs depth >= 2, width >= 1 and channels >= "
        f"1; got depth={depth}, width={width}, "
        f"channels={channels}."
    )
  return DnCNN(
      channels=int(channels), depth=int(depth), width=int(width), dtype=dtype
  )


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "create_denoiser",
    "create_model",
    "DENOISER_NAMES",
    "DnCNN",
    "MODEL_NAMES",
    "ResNet",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
]
