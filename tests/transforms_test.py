"""Tests of dssn_jax.data.transforms: pixels stay on the uint8 grid."""

import numpy as np
import tensorflow as tf

from dssn_jax.data import transforms


def test_crop_flip_moves_whole_pixels():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  out = transforms.crop_flip(images, np.random.default_rng([7, 3]))
  assert out.shape == images.shape and out.dtype == np.uint8
  # A pure function of the generator's seed.
  np.testing.assert_array_equal(
      out, transforms.crop_flip(images, np.random.default_rng([7, 3]))
  )
  pad = transforms.CROP_PADDING
  sources = set()
  for image, result in zip(images, out):
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    found = [
        (dy, dx, flip)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        for flip in (False, True)
        if np.array_equal(
            result,
            padded[dy : dy + 32, dx : dx + 32][:, :: -1 if flip else 1],
        )
    ]
    assert len(found) == 1, "not a padded crop (+ flip) of its image"
    sources.add(found[0])
  assert {flip for _, _, flip in sources} == {False, True}
  assert len({(dy, dx) for dy, dx, _ in sources}) > 1


def test_imagenet_resizes_round_to_the_grid():
  # A constant image stays exactly constant through resize + rounding.
  wide = tf.io.encode_jpeg(
      tf.fill([300, 500, 3], tf.constant(77, tf.uint8)), quality=100
  )
  image = transforms.resize_shorter_and_centre_crop(
      wide, 256, (224, 224)
  ).numpy()
  assert image.shape == (224, 224, 3) and image.dtype == np.uint8
  values = np.unique(image)
  assert len(values) == 1 and abs(int(values[0]) - 77) <= 1
  # Shorter side -> 256, centre crop: a 256x512 image crops columns 144..367.
  ramp = np.tile(
      np.repeat(np.arange(0, 256, 32, dtype=np.uint8), 64)[None, :, None],
      [256, 1, 3],
  )
  image = transforms.resize_shorter_and_centre_crop(
      tf.io.encode_jpeg(ramp, quality=100), 256, (224, 224)
  ).numpy()
  np.testing.assert_allclose(
      image[0, :, 0].astype(int), ramp[0, 144:368, 0].astype(int), atol=8
  )
  crop = transforms.random_resized_crop(
      wide, tf.constant([1, 2], tf.int64), (224, 224)
  ).numpy()
  assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
  assert np.abs(crop.astype(int) - 77).max() <= 1
