"""Pixel transforms that keep images exactly on the uint8 grid.

The DSSN certificate only holds for inputs on the grid {0, 1/q, ..., 1} with
q = 255, so images stay ``uint8`` from the TFDS records to the host batch;
the jitted step divides by 255 on device. Every transform here either moves
whole pixels (pad, crop, flip) or resizes and then rounds back to ``uint8``.

Training augmentations (`datasets.DatasetInfo.train_augmentation`):

* on decoded uint8 batches, in numpy (:data:`BATCH_AUGMENTATIONS`): a
  batch's draws come from one ``np.random.Generator``, so the batch is a
  pure function of the generator's seed;
* on one encoded JPEG, in TensorFlow (:data:`JPEG_AUGMENTATIONS`), with
  stateless ops keyed by a (2,) int64 seed: decoding only the crop window is
  what makes ImageNet's crop cheap.

:func:`resize_shorter_and_centre_crop` is the evaluation transform of the
datasets with an ``eval_resize``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dssn_jax.data.quiet_tensorflow import tf

# Zero padding (pixels per side) before the random crop of "crop_flip": the
# standard CIFAR recipe of the paper.
CROP_PADDING = 4


def crop_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Random crop of the zero-padded images, then a random horizontal flip.

  Args:
    images: uint8 (B, H, W, C).
    rng: the source of every draw, in this order: B top offsets, B left
      offsets (each in [0, 2 * CROP_PADDING]), B flips.

  Returns:
    uint8 (B, H, W, C): image i is rows top_i..top_i+H-1 and columns
    left_i..left_i+W-1 of image i padded by CROP_PADDING zeros per side,
    mirrored left-right where its flip is drawn.
  """
  n, height, width = images.shape[:3]
  pad = CROP_PADDING
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
  flip = rng.random(n) < 0.5
  rows = top[:, None] + np.arange(height)
  cols = left[:, None] + np.arange(width)
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _no_augmentation(
    images: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
  del rng
  return images


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds a float image (0..255 scale) back onto the uint8 grid."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize(image: tf.Tensor, size) -> tf.Tensor:
  """Resizes to size = (height, width), then rounds to uint8.

  Bilinear with antialiasing, like torchvision's PIL resize.
  """
  return to_uint8(
      tf.image.resize(image, size, method="bilinear", antialias=True)
  )


def random_resized_crop(
    encoded: tf.Tensor, seed: tf.Tensor, size: tuple[int, int]
) -> tf.Tensor:
  """Random-resized crop of a JPEG (area 8-100%, aspect 3/4-4/3) and h-flip.

  Args:
    encoded: scalar string, JPEG bytes.
    seed: int64 (2,), the stateless seed of every draw.
    size: (height, width) of the output.

  Returns:
    uint8 (height, width, 3): the crop window, decoded alone, resized to
    ``size`` and rounded to uint8, mirrored left-right with probability 1/2.
  """
  box_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2)
  )
  shape = tf.image.extract_jpeg_shape(encoded)
  begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
      seed=box_seed,
      min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
  )
  offset_y, offset_x, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(box_size)
  window = tf.stack([offset_y, offset_x, height, width])
  image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
  image = resize(image, size)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def resize_shorter_and_centre_crop(
    encoded: tf.Tensor, shorter: int, size: tuple[int, int]
) -> tf.Tensor:
  """Evaluation transform of a JPEG: shorter side to `shorter`, centre crop.

  Like torchvision's ``Resize(shorter)`` then ``CenterCrop(size)``: the long
  side is scaled by the same factor and truncated to an integer.

  Args:
    encoded: scalar string, JPEG bytes.
    shorter: pixels of the shorter side after the resize (rounded to uint8).
    size: (height, width) of the centre crop.

  Returns:
    uint8 (height, width, 3).
  """
  image = tf.io.decode_jpeg(encoded, channels=3)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  short = tf.minimum(height, width)
  new_h = height * shorter // short
  new_w = width * shorter // short
  image = resize(image, tf.stack([new_h, new_w]))
  top = (new_h - size[0]) // 2
  left = (new_w - size[1]) // 2
  return image[top : top + size[0], left : left + size[1]]


BatchAugmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
JpegAugmentation = Callable[[tf.Tensor, tf.Tensor, tuple[int, int]], tf.Tensor]

# The implementations of datasets.BATCH_AUGMENTATIONS and JPEG_AUGMENTATIONS.
BATCH_AUGMENTATIONS: dict[str, BatchAugmentation] = {
    "none": _no_augmentation,
    "crop_flip": crop_flip,
}
JPEG_AUGMENTATIONS: dict[str, JpegAugmentation] = {
    "random_resized_crop": random_resized_crop,
}
