"""The input layout of ResNet-50's first convolution, for benchmarks/aot.py.

The stem convolves 3-channel images with a 7 x 7 kernel at stride 2. Three
input channels tile poorly on a TPU's 128-wide matrix unit, and MLPerf's
ResNet-50 TPU submissions feed the stem in space-to-depth layout instead:
2 x 2 pixel blocks become 12 channels, and the 7 x 7 / 2 convolution becomes
an equivalent 4 x 4 / 1 convolution over the block grid. `space_to_depth`
and `space_to_depth_kernel` write that transform; `stem_row` compiles the
stem both ways for a target, so that the compilers' estimates say what the
layout would gain. (The transform sums the same products in another order,
so it would not keep the vote counts bit for bit; docs/accelerators.md.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

STEM_KERNEL = 7  # ResNet-50's conv1: 7 x 7, stride 2, padding 3, 64 outputs.
STEM_FEATURES = 64


def space_to_depth(x):
  """(B, H, W, C) -> (B, H/2, W/2, 4C): each 2 x 2 pixel block becomes one
  position, its channels ordered (row in block, column in block, channel)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)


def space_to_depth_kernel(kernel):
  """(7, 7, C, O) stride-2 kernel -> (4, 4, 4C, O) stride-1 kernel over
  `space_to_depth` inputs, padded (2, 1) on both spatial axes.

  Output pixel i of the stride-2 convolution (padding 3) reads input pixels
  2i - 3 ... 2i + 3; with a zero tap in front they are 2(i - 2) + k for
  k = 0 ... 7, i.e. block i - 2 + k // 2, position k % 2 in the block.
  """
  k = jnp.asarray(kernel)
  kh, kw, c, o = k.shape
  if (kh, kw) != (STEM_KERNEL, STEM_KERNEL):
    raise ValueError(f"expected a 7 x 7 kernel, got {kh} x {kw}")
  k = jnp.pad(k, ((1, 0), (1, 0), (0, 0), (0, 0)))  # (8, 8, C, O).
  k = k.reshape(4, 2, 4, 2, c, o).transpose(0, 2, 1, 3, 4, 5)
  return k.reshape(4, 4, 4 * c, o)


def stem(x, kernel):
  """The stem as the model computes it: (B, H, W, 3) -> (B, H/2, W/2, 64)."""
  return jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(2, 2),
      padding=((3, 3), (3, 3)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def stem_space_to_depth(x_s2d, kernel_s2d):
  """The same stem over space-to-depth inputs and kernel."""
  return jax.lax.conv_general_dilated(
      x_s2d,
      kernel_s2d,
      window_strides=(1, 1),
      padding=((2, 1), (2, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def stem_row(layout: str, forward_batch: int, mesh, dtype: str) -> dict:
  """Compiles the stem for `forward_batch` ImageNet inputs per device.

  Args:
    layout: "nhwc" (the model's), "s2d" (space-to-depth inputs, as if the
      noisy inputs were generated in that layout) or "s2d+transform" (the
      model's inputs, transformed on the chip before the convolution).
    forward_batch: noisy inputs per forward pass per device.
    mesh: a mesh of compile-only devices; the batch is sharded over it.
    dtype: compute dtype of inputs and kernel.

  Returns:
    The compiled program's analysis (`dssn_jax.runs.aot.CompiledProgram`).
  """
  from dssn_jax.runs import aot  # pylint: disable=g-import-not-at-top

  spec = jax.sharding.PartitionSpec
  sharded = jax.sharding.NamedSharding(mesh, spec(mesh.axis_names))
  replicated = jax.sharding.NamedSharding(mesh, spec())
  rows = forward_batch * mesh.size
  image = (224, 224, 3) if layout != "s2d" else (112, 112, 12)
  x = jax.ShapeDtypeStruct((rows,) + image, dtype, sharding=sharded)
  kernel = jax.ShapeDtypeStruct(
      (STEM_KERNEL, STEM_KERNEL, 3, STEM_FEATURES), dtype, sharding=replicated
  )
  if layout == "nhwc":
    fn = stem
  elif layout == "s2d":

    def fn(x, kernel):
      return stem_space_to_depth(x, space_to_depth_kernel(kernel))

  elif layout == "s2d+transform":

    def fn(x, kernel):
      return stem_space_to_depth(
          space_to_depth(x), space_to_depth_kernel(kernel)
      )

  else:
    raise ValueError(f"unknown layout {layout!r}")
  return aot.compile_lowered(jax.jit(fn).lower(x, kernel))
