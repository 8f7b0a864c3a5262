"""Tests of dssn_jax.data.transforms: pixels stay on the uint8 grid."""

import io

import numpy as np
from PIL import Image

from dssn_jax.data import transforms


def _encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
  out = io.BytesIO()
  kwargs = {"quality": 100} if fmt == "JPEG" else {}
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
      out, fmt, **kwargs
  )
  return out.getvalue()


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
  wide = _encode(np.full([300, 500, 3], 77, np.uint8))
  image = transforms.resize_shorter_and_centre_crop(wide, 256, (224, 224))
  assert image.shape == (224, 224, 3) and image.dtype == np.uint8
  values = np.unique(image)
  assert len(values) == 1 and abs(int(values[0]) - 77) <= 1
  # Shorter side -> 256, centre crop: a 256x512 image crops columns 144..367.
  ramp = np.tile(
      np.repeat(np.arange(0, 256, 32, dtype=np.uint8), 64)[None, :, None],
      [256, 1, 3],
  )
  image = transforms.resize_shorter_and_centre_crop(
      _encode(ramp), 256, (224, 224)
  )
  np.testing.assert_allclose(
      image[0, :, 0].astype(int), ramp[0, 144:368, 0].astype(int), atol=8
  )
  crop = transforms.random_resized_crop(
      wide, np.random.default_rng([1, 2]), (224, 224)
  )
  assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
  assert np.abs(crop.astype(int) - 77).max() <= 1
  # A pure function of the generator's seed.
  np.testing.assert_array_equal(
      crop,
      transforms.random_resized_crop(
          wide, np.random.default_rng([1, 2]), (224, 224)
      ),
  )


def test_random_resized_crop_windows():
  # Columns are numbered by their value: a crop's columns are increasing
  # (or decreasing, flipped) runs of the source's, over 8-100% of its area.
  ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], [150, 1, 3])
  encoded = _encode(ramp, "PNG")
  flips = set()
  for seed in range(20):
    crop = transforms.random_resized_crop(
        encoded, np.random.default_rng(seed), (32, 32)
    ).astype(int)
    row = crop[0, :, 0]
    flips.add(bool(row[0] > row[-1]))
    assert (np.diff(row) >= 0).all() or (np.diff(row) <= 0).all()
    top, left, h, w = transforms._crop_box(  # pylint: disable=protected-access
        150, 200, np.random.default_rng(seed)
    )
    assert 0.08 * 150 * 200 - 1 <= h * w <= 150 * 200
    assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    assert 0 <= top <= 150 - h and 0 <= left <= 200 - w
  assert flips == {False, True}


def test_decode_is_lossless_for_png():
  rng = np.random.default_rng(0)
  for shape in ((28, 28, 1), (32, 32, 3)):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(
        transforms.decode(_encode(image, "PNG"), shape[-1]), image
    )
