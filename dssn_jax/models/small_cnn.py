"""A small, fast CNN for 28x28 grayscale images (Fashion-MNIST).

Input (B, 28, 28, 1) in [0, 1] -> normalize -> conv 3x3 (32) -> max pool 2 ->
conv 3x3 (64) -> max pool 2 -> conv 3x3 (128) -> max pool 2 -> dense (256) ->
dense (num_classes) -> logits. Every conv and the hidden dense layer are
followed by BatchNorm and ReLU. About 8 M multiply-adds and 0.39 M params per
28x28 image, so certification with hundreds of noise samples per image stays
cheap on a CPU.

Variables: params/conv{1,2,3}/kernel, params|batch_stats/bn{1,2,3,4}/...,
params/dense1/{kernel,bias}, params/fc/{kernel,bias}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dssn_jax.models import layers


class SmallCNN(nn.Module):
  """Three conv-BN-ReLU-pool stages and a two-layer classifier head.

  Attributes:
    num_classes: number of output logits.
    mean: per-channel input mean, [0, 1] pixel units.
    std: per-channel input standard deviation, [0, 1] pixel units.
    features: channels of the three convolutions.
    hidden: width of the hidden dense layer.
    dtype: compute dtype (params are float32, logits always float32).
  """

  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  features: Sequence[int] = (32, 64, 128)
  hidden: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images (B, H, W, C) in [0, 1] to float32 logits (B, num_classes).

    H and W must be at least 8; 28x28 gives a 3x3 final map.
    """
    x = layers.normalize(x, self.mean, self.std, self.dtype)
    for i, width in enumerate(self.features, start=1):
      x = layers.conv(width, 3, 1, 1, self.dtype, f"conv{i}")(x)
      x = nn.relu(layers.batch_norm(train, self.dtype, f"bn{i}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = layers.dense(self.hidden, self.dtype, "dense1")(x)
    x = nn.relu(
        layers.batch_norm(train, self.dtype, f"bn{len(self.features) + 1}")(x)
    )
    x = layers.dense(self.num_classes, self.dtype, "fc")(x)
    return x.astype(jnp.float32)
