"""Layer conventions shared by all models: input normalization, BatchNorm, init.

Every model takes images in [0, 1] and normalizes them itself, so that noise is
added in pixel space (docs/design.md, section 1) and a checkpoint carries its
own normalization. BatchNorm and convolution initialization follow PyTorch, the
framework of the reference checkpoints: epsilon 1e-5, running averages updated
as `0.9 * running + 0.1 * batch` (PyTorch momentum 0.1), He-normal kernels with
fan-out scaling (`std = sqrt(2 / (kh * kw * out_channels))`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Flax convention; equals PyTorch's momentum=0.1.

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def normalize(
    x: Any, mean: Sequence[float], std: Sequence[float], dtype: Any
) -> Any:
  """Normalizes images per channel: `(x - mean) / std`, in float32.

  Args:
    x: float array (B, H, W, C), pixel values in [0, 1].
    mean: C per-channel means (or a single value for all channels), in [0, 1]
      pixel units.
    std: C per-channel standard deviations (or a single value), same units.
    dtype: compute dtype of the result.

  Returns:
    Array (B, H, W, C) of `dtype`.

  Raises:
    ValueError: if `mean` or `std` has neither 1 nor C entries, or a std is
      not positive.
  """
  channels = x.shape[-1]
  mean = jnp.asarray(tuple(mean), jnp.float32).reshape(-1)
  std = jnp.asarray(tuple(std), jnp.float32).reshape(-1)
  for label, value in (("mean", mean), ("std", std)):
    if value.shape[0] not in (1, channels):
      raise ValueError(
          f"{label} has {value.shape[0]} entries; expected 1 or {channels} "
          f"(the channels of inputs of shape {x.shape})."
      )
  return ((jnp.asarray(x, jnp.float32) - mean) / std).astype(dtype)


def batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """A PyTorch-compatible BatchNorm over the channel axis.

  Args:
    train: normalize with batch statistics and update the running averages in
      the `batch_stats` collection (True), or use the running averages (False).
    dtype: compute dtype (statistics are reduced in float32); params are f32.
    name: submodule name.

  Returns:
    An `nn.BatchNorm` whose `scale`, `bias` params and `mean`, `var` batch
    stats correspond to PyTorch's `weight`, `bias`, `running_mean`,
    `running_var`. One training-only difference: Flax updates `var` with the
    biased batch variance, PyTorch `running_var` with the unbiased one (a
    factor n / (n - 1), n = batch * height * width).
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def conv(
    features: int,
    kernel: int,
    strides: int,
    padding: int,
    dtype: Any,
    name: str,
) -> nn.Conv:
  """A bias-free square convolution with explicit symmetric zero padding.

  Explicit padding reproduces PyTorch's `Conv2d(padding=p)`; Flax's 'SAME'
  pads asymmetrically (more at the end) for even strides.

  Args:
    features: output channels.
    kernel: kernel size (kernel x kernel).
    strides: stride in both spatial dimensions.
    padding: zero padding on each side of both spatial dimensions.
    dtype: compute dtype; params are float32.
    name: submodule name.

  Returns:
    An `nn.Conv` with kernel shape (kernel, kernel, in_channels, features).
  """
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=((padding, padding), (padding, padding)),
      use_bias=False,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=conv_kernel_init,
      name=name,
  )


def dense(features: int, dtype: Any, name: str) -> nn.Dense:
  """A fully connected layer with bias, float32 params."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)
