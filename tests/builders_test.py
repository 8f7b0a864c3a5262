"""Tests of dssn_jax.data.builders, quiet_tensorflow and fashion_mnist: TFDS
builders, data_dir checks, TensorFlow off the accelerators, and Fashion-MNIST
prepared from the Debian files (the real data, built once per session by
tests/conftest.py)."""

import gzip
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dssn_jax.data import builders
from dssn_jax.data import fashion_mnist
from dssn_jax.data import quiet_tensorflow

DEBIAN_DIR = fashion_mnist.FASHION_MNIST_MANUAL_DIR


def _read_debian(kind, split):
  fname = {
      ("images", "test"): "t10k-images-idx3-ubyte.gz",
      ("labels", "test"): "t10k-labels-idx1-ubyte.gz",
  }[(kind, split)]
  with gzip.open(os.path.join(DEBIAN_DIR, fname)) as f:
    raw = f.read()
  if kind == "images":
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)
  return np.frombuffer(raw, np.uint8, offset=8)


def test_hide_tf_from_accelerators():
  quiet_tensorflow.hide_tf_from_accelerators()
  # Idempotent, also after TF initialized.
  quiet_tensorflow.hide_tf_from_accelerators()
  assert tf.config.get_visible_devices("GPU") == []
  assert tf.config.get_visible_devices("TPU") == []


def test_check_data_dir(tmp_path):
  builders.check_data_dir(None)  # TFDS's default.
  builders.check_data_dir(tmp_path)
  missing = tmp_path / "typo"
  with pytest.raises(FileNotFoundError, match="mkdir -p"):
    builders.check_data_dir(missing)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    builders.get_builder("fashion_mnist", missing)
  assert not missing.exists()  # Not created, nothing prepared there.


@pytest.mark.slow
def test_fashion_mnist_prepared_from_debian(fashion_mnist_data_dir):
  builder = builders.get_builder("fashion_mnist", fashion_mnist_data_dir)
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 60_000
  assert builder.info.splits["test"].num_examples == 10_000
  assert builder.info.features["image"].shape == (28, 28, 1)
  assert builder.info.features["image"].dtype == tf.uint8
  assert builder.info.features["label"].num_classes == 10
  ex = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
  images, labels = ex["image"], ex["label"]
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)

  # Exactly the Debian examples (TFDS stores them in a shuffled order).
  def digests(imgs, lbls):
    return sorted(
        hashlib.sha1(i.tobytes() + bytes([l])).digest()
        for i, l in zip(imgs, lbls)
    )

  assert digests(images, labels) == digests(
      _read_debian("images", "test"), _read_debian("labels", "test")
  )


@pytest.mark.slow
def test_prepare_fashion_mnist_is_idempotent(fashion_mnist_data_dir):
  path = fashion_mnist.prepare_fashion_mnist(
      fashion_mnist_data_dir, manual_dir="/nonexistent"
  )
  assert path.startswith(fashion_mnist_data_dir) and os.path.isdir(path)


def test_prepare_fashion_mnist_missing_files(tmp_path):
  bogus = tmp_path / "no-such-dir"
  with pytest.raises(FileNotFoundError) as err:
    fashion_mnist.prepare_fashion_mnist(tmp_path / "tfds", manual_dir=bogus)
  assert "apt-get install dataset-fashion-mnist" in str(err.value)
  assert str(bogus) in str(err.value)
