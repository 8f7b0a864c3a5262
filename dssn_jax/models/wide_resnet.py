"""Wide residual network (Zagoruyko & Komodakis 2016), the CIFAR-10 model.

Structure and names follow the PyTorch `WideResNet` used by the authors
(xternalz/WideResNet-pytorch, as in Yang et al. 2020 and Levine & Feizi 2021),
so their state_dicts convert key by key. Input (B, 32, 32, 3) in [0, 1] ->
normalize -> `conv1` 3x3 to 16 channels -> three groups of n = (depth - 4) / 6
pre-activation blocks of widths 16k, 32k, 64k (k = widen_factor) and strides
1, 2, 2 -> `bn1` -> ReLU -> average pool -> `fc` -> logits (B, num_classes).

Name mapping (PyTorch key -> Flax variable path; `G` group 1..3, `I` block):

  conv1.weight                     params/conv1/kernel
  blockG.layer.I.bn1.weight        params/blockG_layer_I/bn1/scale
  blockG.layer.I.bn1.bias          params/blockG_layer_I/bn1/bias
  blockG.layer.I.bn1.running_mean  batch_stats/blockG_layer_I/bn1/mean
  blockG.layer.I.bn1.running_var   batch_stats/blockG_layer_I/bn1/var
  blockG.layer.I.conv1.weight      params/blockG_layer_I/conv1/kernel
  blockG.layer.I.bn2.*             .../blockG_layer_I/bn2/...
  blockG.layer.I.conv2.weight      params/blockG_layer_I/conv2/kernel
  blockG.layer.I.convShortcut.weight  params/blockG_layer_I/convShortcut/kernel
  bn1.*                            params|batch_stats/bn1/...
  fc.weight, fc.bias               params/fc/kernel, params/fc/bias

Conv kernels transpose (O, I, kh, kw) -> (kh, kw, I, O); the fc weight
transposes (out, in) -> (in, out); `num_batches_tracked` has no counterpart.
Only the first block of each group has `convShortcut` (its width or stride
changes). PyTorch pools with `avg_pool2d(out, 8)`, which on the 8x8 final map
of a 32x32 input is the global average used here. Dropout (the PyTorch
`dropRate`, 0 in the reference models) is not implemented.

In the authors' code (src/models.py, from Yang et al.'s rs4a) the network is
`model = DataParallel(WideResNet(...))` beside `norm = DataParallel(
NormalizeLayer)`, so checkpoint keys read `model.module.conv1.weight`, ...;
their normalization is `norm.module.mu` and `norm.module.log_sig` (shape
(3, 1, 1)), i.e. `mean = mu` and `std = exp(log_sig)` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dssn_jax.models import layers


class WideBasicBlock(nn.Module):
  """Pre-activation basic block: bn1-relu-conv1-bn2-relu-conv2 + shortcut.

  The shortcut is the identity when input and output shapes agree, otherwise
  a 1x1 convolution `convShortcut` of the pre-activated input relu(bn1(x)).

  Attributes:
    features: output channels.
    strides: stride of `conv1` and of the shortcut.
    dtype: compute dtype.
  """

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps (B, H, W, C_in) to (B, H / strides, W / strides, features)."""
    projection = x.shape[-1] != self.features or self.strides != 1
    out = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(x))
    if projection:
      shortcut = layers.conv(
          self.features, 1, self.strides, 0, self.dtype, "convShortcut"
      )(out)
    else:
      shortcut = x
    y = layers.conv(self.features, 3, self.strides, 1, self.dtype, "conv1")(out)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn2")(y))
    y = layers.conv(self.features, 3, 1, 1, self.dtype, "conv2")(y)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-widen_factor for 32x32 images (WRN-40-2 by default).

  Attributes:
    num_classes: number of output logits.
    mean: per-channel input mean, [0, 1] pixel units.
    std: per-channel input standard deviation, [0, 1] pixel units.
    depth: total depth, 6n + 4.
    widen_factor: width multiplier k.
    dtype: compute dtype (params are float32, logits always float32).
  """

  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  depth: int = 40
  widen_factor: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images (B, H, W, 3) in [0, 1] to float32 logits (B, num_classes)."""
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(
          f"WideResNet depth must be 6n + 4, n >= 1; got " f"{self.depth}."
      )
    blocks_per_group = (self.depth - 4) // 6
    x = layers.normalize(x, self.mean, self.std, self.dtype)
    x = layers.conv(16, 3, 1, 1, self.dtype, "conv1")(x)
    for group, (width, strides) in enumerate(
        ((16, 1), (32, 2), (64, 2)), start=1
    ):
      for i in range(blocks_per_group):
        x = WideBasicBlock(
            width * self.widen_factor,
            strides if i == 0 else 1,
            dtype=self.dtype,
            name=f"block{group}_layer_{i}",
        )(x, train)
    x = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = layers.dense(self.num_classes, self.dtype, "fc")(x)
    return x.astype(jnp.float32)
