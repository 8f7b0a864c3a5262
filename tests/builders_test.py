"""Tests of dssn_jax.data.builders, sources, quiet_tensorflow and
fashion_mnist: TFDS builders, data_dir checks, TensorFlow off the
accelerators, and Fashion-MNIST prepared from the Debian files as ArrayRecord
(the real data, built once per session by tests/conftest.py) and read back
by index."""

import gzip
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from dssn_jax.data import builders
from dssn_jax.data import fashion_mnist
from dssn_jax.data import quiet_tensorflow
from dssn_jax.data import sources
from dssn_jax.data import transforms

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
  sources.check_data_dir(None)  # TFDS's default.
  sources.check_data_dir(tmp_path)
  missing = tmp_path / "typo"
  with pytest.raises(FileNotFoundError, match="mkdir -p"):
    sources.check_data_dir(missing)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    builders.get_builder("fashion_mnist", missing)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.open_split("fashion_mnist", "test", missing)
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
  assert builder.info.file_format.value == builders.FILE_FORMAT
  test = sources.open_split("fashion_mnist", "test", fashion_mnist_data_dir)
  records = test.__getitems__(list(range(len(test))))
  images = np.stack([transforms.decode(r["image"], 1) for r in records])
  labels = np.array([r["label"] for r in records])
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


@pytest.mark.slow
def test_tfrecord_data_dir_is_refused(tmp_path):
  # A dataset prepared as TFRecord (an earlier dssn-jax) cannot be read by
  # index: the error says how to prepare it again.
  fashion_mnist._debian_fashion_mnist_cls()(  # pylint: disable=protected-access
      data_dir=str(tmp_path), file_format="tfrecord"
  ).download_and_prepare(
      download_config=quiet_tensorflow.tfds.download.DownloadConfig(
          manual_dir=DEBIAN_DIR
      )
  )
  with pytest.raises(ValueError, match="prepare it again as ArrayRecord"):
    sources.open_split("fashion_mnist", "test", tmp_path)
