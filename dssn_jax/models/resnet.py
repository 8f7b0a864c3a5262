"""ImageNet ResNet with bottleneck blocks (ResNet-50 by default).

Structure and names follow torchvision's `resnet50` (v1.5: the stride is on
the 3x3 convolution), so its state_dicts convert key by key. Input
(B, 224, 224, 3) in [0, 1] -> normalize -> `conv1` 7x7/2 (pad 3) -> `bn1` ->
ReLU -> max pool 3x3/2 (pad 1) -> stages `layer1..4` of (3, 4, 6, 3) bottleneck
blocks, widths 64, 128, 256, 512 (x4 outputs), strides 1, 2, 2, 2 -> global
average pool -> `fc` -> logits (B, num_classes). Any input size works; the
output is (B, num_classes) (224x224 gives a 7x7 final map).

Name mapping (PyTorch key -> Flax variable path; `S` stage 1..4, `I` block):

  conv1.weight                    params/conv1/kernel
  bn1.{weight,bias}               params/bn1/{scale,bias}
  bn1.{running_mean,running_var}  batch_stats/bn1/{mean,var}
  layerS.I.convJ.weight           params/layerS_I/convJ/kernel   (J = 1, 2, 3)
  layerS.I.bnJ.*                  .../layerS_I/bnJ/...
  layerS.0.downsample.0.weight    params/layerS_0/downsample_0/kernel
  layerS.0.downsample.1.*         .../layerS_0/downsample_1/...
  fc.weight, fc.bias              params/fc/kernel, params/fc/bias

Conv kernels transpose (O, I, kh, kw) -> (kh, kw, I, O), the fc weight
(out, in) -> (in, out). Every stage's first block has a downsample (layer1.0
changes width 64 -> 256). Checkpoints saved from `DataParallel` prefix keys
with `module.`: `1.module.` in Cohen et al.'s `Sequential(NormalizeLayer,
DataParallel(resnet50))`, `model.module.` in Levine & Feizi's code (whose
normalization is `norm.module.mu` and `std = exp(norm.module.log_sig)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dssn_jax.models import layers


class Bottleneck(nn.Module):
  """Bottleneck block: 1x1 -> 3x3 (strided) -> 1x1 (4x width), post-activation.

  The shortcut is the identity when shapes agree, otherwise `downsample`:
  a strided 1x1 convolution `downsample_0` and BatchNorm `downsample_1`.

  Attributes:
    features: width of the 3x3 convolution; the block outputs 4 * features.
    strides: stride of `conv2` and of the downsample.
    dtype: compute dtype.
  """

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps (B, H, W, C_in) to (B, H / strides, W / strides, 4 * features)."""
    out_features = 4 * self.features
    y = layers.conv(self.features, 1, 1, 0, self.dtype, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(y))
    y = layers.conv(self.features, 3, self.strides, 1, self.dtype, "conv2")(y)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn2")(y))
    y = layers.conv(out_features, 1, 1, 0, self.dtype, "conv3")(y)
    y = layers.batch_norm(train, self.dtype, "bn3")(y)
    if x.shape[-1] != out_features or self.strides != 1:
      x = layers.conv(
          out_features, 1, self.strides, 0, self.dtype, "downsample_0"
      )(x)
      x = layers.batch_norm(train, self.dtype, "downsample_1")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Bottleneck ResNet in torchvision layout (ResNet-50 by default).

  Attributes:
    num_classes: number of output logits.
    mean: per-channel input mean, [0, 1] pixel units.
    std: per-channel input standard deviation, [0, 1] pixel units.
    stage_sizes: bottleneck blocks per stage ((3, 4, 23, 3) is ResNet-101).
    dtype: compute dtype (params are float32, logits always float32).
  """

  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images (B, H, W, 3) in [0, 1] to float32 logits (B, num_classes)."""
    x = layers.normalize(x, self.mean, self.std, self.dtype)
    x = layers.conv(64, 7, 2, 3, self.dtype, "conv1")(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes, start=1):
      width = 64 * 2 ** (stage - 1)
      for i in range(num_blocks):
        x = Bottleneck(
            width,
            2 if i == 0 and stage > 1 else 1,
            dtype=self.dtype,
            name=f"layer{stage}_{i}",
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = layers.dense(self.num_classes, self.dtype, "fc")(x)
    return x.astype(jnp.float32)
