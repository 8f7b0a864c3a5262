"""CIFAR ResNet with post-activation basic blocks (ResNet-110 by default).

Structure and names follow `archs/cifar_resnet.py` of Cohen et al. 2019
(itself from bearpaw/pytorch-classification). Input (B, 32, 32, 3) in [0, 1]
-> normalize -> `conv1` 3x3 to 16 channels -> `bn1` -> ReLU -> three stages
`layer1..3` of n = (depth - 2) / 6 basic blocks, widths 16, 32, 64, strides
1, 2, 2 -> average pool -> `fc` -> logits (B, num_classes).

Name mapping (PyTorch key -> Flax variable path; `S` stage 1..3, `I` block):

  conv1.weight                    params/conv1/kernel
  bn1.{weight,bias}               params/bn1/{scale,bias}
  bn1.{running_mean,running_var}  batch_stats/bn1/{mean,var}
  layerS.I.conv1.weight           params/layerS_I/conv1/kernel
  layerS.I.bn1.*                  .../layerS_I/bn1/...
  layerS.I.conv2.weight           params/layerS_I/conv2/kernel
  layerS.I.bn2.*                  .../layerS_I/bn2/...
  layerS.0.downsample.0.weight    params/layerS_0/downsample_0/kernel
  layerS.0.downsample.1.*         .../layerS_0/downsample_1/...
  fc.weight, fc.bias              params/fc/kernel, params/fc/bias

Conv kernels transpose (O, I, kh, kw) -> (kh, kw, I, O), the fc weight
(out, in) -> (in, out). Only `layer2.0` and `layer3.0` have a downsample.
Cohen et al. wrap the network as `Sequential(NormalizeLayer, model)`, so their
keys carry a `1.` prefix; the normalization constants are not in the
state_dict and become this module's `mean` and `std`.

`shortcut="zero_pad"` gives instead the parameter-free "option A" shortcut of
He et al. 2016 as in Idelbayev's `resnet110` (`src/lib/classic_resnet.py` of
Yang et al.'s and Levine & Feizi's code): subsample by 2 and zero-pad the
channels, `planes // 4` on each side. Its keys are `layerS.I.*` as above
without `downsample`, and `linear.*` for this module's `fc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dssn_jax.models import layers


class BasicBlock(nn.Module):
  """Post-activation basic block: relu(bn2(conv2(relu(bn1(conv1 x)))) + x).

  The shortcut is the identity when shapes agree, otherwise `downsample`
  (a 1x1 convolution `downsample_0` followed by BatchNorm `downsample_1`) or,
  with `shortcut="zero_pad"`, x[:, ::2, ::2] zero-padded to `features`
  channels.

  Attributes:
    features: output channels.
    strides: stride of `conv1` and of the downsample.
    shortcut: "projection" or "zero_pad" (see the module docstring).
    dtype: compute dtype.
  """

  features: int
  strides: int = 1
  shortcut: str = "projection"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps (B, H, W, C_in) to (B, H / strides, W / strides, features)."""
    y = layers.conv(self.features, 3, self.strides, 1, self.dtype, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(y))
    y = layers.conv(self.features, 3, 1, 1, self.dtype, "conv2")(y)
    y = layers.batch_norm(train, self.dtype, "bn2")(y)
    if x.shape[-1] != self.features or self.strides != 1:
      if self.shortcut == "projection":
        x = layers.conv(
            self.features, 1, self.strides, 0, self.dtype, "downsample_0"
        )(x)
        x = layers.batch_norm(train, self.dtype, "downsample_1")(x)
      elif self.shortcut == "zero_pad":
        pad = self.features // 4
        if x.shape[-1] + 2 * pad != self.features:
          raise ValueError(
              f"zero_pad shortcut cannot map {x.shape[-1]} to {self.features} "
              f"channels (it pads {pad} on each side)."
          )
        x = jnp.pad(x[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (pad, pad)))
      else:
        raise ValueError(
            f"shortcut must be 'projection' or 'zero_pad', got "
            f"{self.shortcut!r}."
        )
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """ResNet-depth for 32x32 images (ResNet-110 by default).

  Attributes:
    num_classes: number of output logits.
    mean: per-channel input mean, [0, 1] pixel units.
    std: per-channel input standard deviation, [0, 1] pixel units.
    depth: total depth, 6n + 2.
    shortcut: "projection" (Cohen et al.) or "zero_pad" (option A).
    dtype: compute dtype (params are float32, logits always float32).
  """

  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  depth: int = 110
  shortcut: str = "projection"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images (B, H, W, 3) in [0, 1] to float32 logits (B, num_classes)."""
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(
          f"CifarResNet depth must be 6n + 2, n >= 1; got " f"{self.depth}."
      )
    blocks_per_stage = (self.depth - 2) // 6
    x = layers.normalize(x, self.mean, self.std, self.dtype)
    x = layers.conv(16, 3, 1, 1, self.dtype, "conv1")(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(x))
    for stage, (width, strides) in enumerate(
        ((16, 1), (32, 2), (64, 2)), start=1
    ):
      for i in range(blocks_per_stage):
        x = BasicBlock(
            width,
            strides if i == 0 else 1,
            shortcut=self.shortcut,
            dtype=self.dtype,
            name=f"layer{stage}_{i}",
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = layers.dense(self.num_classes, self.dtype, "fc")(x)
    return x.astype(jnp.float32)
