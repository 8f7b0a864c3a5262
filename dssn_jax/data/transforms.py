"""Pixel transforms that keep images exactly on the uint8 grid, in numpy and
PIL (no TensorFlow).

The DSSN certificate only holds for inputs on the grid {0, 1/q, ..., 1} with
q = 255, so images stay ``uint8`` from the stored records to the host batch;
the jitted step divides by 255 on device. Every transform here either moves
whole pixels (pad, crop, flip) or resizes and then rounds back to ``uint8``.

Training augmentations (`datasets.DatasetInfo.train_augmentation`) draw
from an ``np.random.Generator`` (Grain's ``random_map`` hands one to each
element, seeded by the pipeline's seed and the element's position), so an
augmented batch is a pure function of that seed:

* on decoded uint8 batches (:data:`BATCH_AUGMENTATIONS`): CIFAR's crop and
  flip;
* on one encoded JPEG (:data:`JPEG_AUGMENTATIONS`): ImageNet's random
  resized crop, which resizes only the crop window.

Resizes are PIL's bilinear with antialiasing, the resize of torchvision's
``Resize`` and ``RandomResizedCrop`` on PIL images, which the reference
PyTorch code uses. :func:`resize_shorter_and_centre_crop` is the evaluation
transform of the datasets with an ``eval_resize``.
"""

from __future__ import annotations

from collections.abc import Callable
import io
import math

import numpy as np
from PIL import Image

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


def _open(encoded: bytes, channels: int) -> Image.Image:
  """A PIL image of PNG or JPEG bytes with `channels` channels (1 or 3);
  nothing is decoded until its pixels are used."""
  image = Image.open(io.BytesIO(encoded))
  mode = "L" if channels == 1 else "RGB"
  return image if image.mode == mode else image.convert(mode)


def _array(image: Image.Image, channels: int) -> np.ndarray:
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if channels == 1 else array


def decode(encoded: bytes, channels: int) -> np.ndarray:
  """uint8 (H, W, channels) pixels of PNG or JPEG bytes (PNG: lossless,
  the stored pixels exactly)."""
  return _array(_open(encoded, channels), channels)


def resize_shorter_and_centre_crop(
    encoded: bytes, shorter: int, size: tuple[int, int]
) -> np.ndarray:
  """Evaluation transform of a JPEG: shorter side to `shorter`, centre crop.

  Like torchvision's ``Resize(shorter)`` then ``CenterCrop(size)``: the long
  side is scaled by the same factor and truncated to an integer.

  Args:
    encoded: JPEG bytes.
    shorter: pixels of the shorter side after the resize (rounded to uint8).
    size: (height, width) of the centre crop.

  Returns:
    uint8 (height, width, 3).
  """
  image = _open(encoded, 3)
  width, height = image.size
  short = min(height, width)
  new_h, new_w = height * shorter // short, width * shorter // short
  image = image.resize((new_w, new_h), Image.BILINEAR)
  top, left = (new_h - size[0]) // 2, (new_w - size[1]) // 2
  return _array(image, 3)[top : top + size[0], left : left + size[1]]


def _crop_box(
    height: int, width: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a random crop: area 8-100% of the image, aspect
  ratio 3/4-4/3 (log-uniform), 10 tries, else the centre crop at the
  nearest allowed ratio (torchvision's RandomResizedCrop.get_params)."""
  area = height * width
  log_ratio = (math.log(3 / 4), math.log(4 / 3))
  for _ in range(10):
    target = area * rng.uniform(0.08, 1.0)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  ratio = width / height
  if ratio < 3 / 4:
    w, h = width, int(round(width / (3 / 4)))
  elif ratio > 4 / 3:
    h, w = height, int(round(height * (4 / 3)))
  else:
    w, h = width, height
  h, w = min(h, height), min(w, width)
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    encoded: bytes, rng: np.random.Generator, size: tuple[int, int]
) -> np.ndarray:
  """Random-resized crop of a JPEG (area 8-100%, aspect 3/4-4/3) and h-flip.

  Args:
    encoded: JPEG bytes.
    rng: the source of every draw (the crop box, then the flip).
    size: (height, width) of the output.

  Returns:
    uint8 (height, width, 3): the crop window resized to ``size`` and
    rounded to uint8, mirrored left-right with probability 1/2.
  """
  image = _open(encoded, 3)
  width, height = image.size
  top, left, h, w = _crop_box(height, width, rng)
  image = image.resize(
      (size[1], size[0]), Image.BILINEAR, box=(left, top, left + w, top + h)
  )
  array = _array(image, 3)
  return array[:, ::-1] if rng.random() < 0.5 else array


BatchAugmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
JpegAugmentation = Callable[
    [bytes, np.random.Generator, tuple[int, int]], np.ndarray
]

# The implementations of datasets.BATCH_AUGMENTATIONS and JPEG_AUGMENTATIONS.
BATCH_AUGMENTATIONS: dict[str, BatchAugmentation] = {
    "none": _no_augmentation,
    "crop_flip": crop_flip,
}
JPEG_AUGMENTATIONS: dict[str, JpegAugmentation] = {
    "random_resized_crop": random_resized_crop,
}
