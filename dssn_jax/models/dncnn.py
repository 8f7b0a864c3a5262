"""DnCNN (Zhang et al. 2017): a residual denoiser for denoised smoothing.

Input (B, H, W, C) noisy images in [0, 1] pixel units (noise may push them a
little outside) -> conv 3x3 (width) + ReLU -> (depth - 2) x [conv 3x3
(width), BatchNorm, ReLU] -> conv 3x3 (C) = predicted noise n. The output is
`x - n`, in the same pixel units as the input, so that a classifier that
takes [0, 1] images can sit behind it unchanged. Same spatial size (zero
padding 1), any H, W and any number of channels C (1 or 3).

The paper's denoiser (Salman et al. 2020) is depth 17, width 64: about
`(depth - 2) * 9 * width**2` multiply-adds per pixel (0.43 G for a 28x28
image, ~55x the small CNN); `depth` and `width` are configurable so a CPU
study can afford it.

Variables: params/conv_in/{kernel,bias}, params/conv{1..depth-2}/kernel,
params|batch_stats/bn{1..depth-2}/..., params/conv_out/kernel.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dssn_jax.models import layers


class DnCNN(nn.Module):
  """A residual DnCNN: predicts the noise and subtracts it.

  Attributes:
    channels: channels C of the images (output channels of the last conv).
    depth: number of convolutions (at least 2).
    width: channels of the hidden convolutions.
    dtype: compute dtype (params are float32, outputs always float32).
  """

  channels: int
  depth: int = 17
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps noisy images (B, H, W, C) to denoised ones (B, H, W, C), float32.

    Both in [0, 1] pixel units (the output is not clipped: the classifier
    behind it sees what the denoiser produced).
    """
    if x.shape[-1] != self.channels:
      raise ValueError(
          f"DnCNN for {self.channels} channels got inputs of "
          f"shape {x.shape}."
      )
    x = jnp.asarray(x, jnp.float32)
    h = nn.Conv(
        self.width,
        (3, 3),
        padding=((1, 1), (1, 1)),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=layers.conv_kernel_init,
        name="conv_in",
    )(x.astype(self.dtype))
    h = nn.relu(h)
    for i in range(1, self.depth - 1):
      h = layers.conv(self.width, 3, 1, 1, self.dtype, f"conv{i}")(h)
      h = nn.relu(layers.batch_norm(train, self.dtype, f"bn{i}")(h))
    # Zero init: an untrained denoiser is the identity, so training starts
    # from the classifier's own accuracy on noisy inputs rather than from
    # random images.
    noise = nn.Conv(
        self.channels,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.zeros,
        name="conv_out",
    )(h)
    return x - noise.astype(jnp.float32)


def forward_flops(
    height: int, width_px: int, channels: int, depth: int, width: int
) -> int:
  """Multiply-adds x 2 of one forward pass (convolutions only).

  Args:
    height, width_px: image size in pixels.
    channels: image channels C.
    depth, width: the DnCNN's depth and hidden width.

  Returns:
    FLOPs of one image, counting a multiply-add as 2.
  """
  per_pixel = 9 * (
      channels * width + (depth - 2) * width * width + width * channels
  )
  return 2 * per_pixel * height * width_px
