"""Fashion-MNIST as a TFDS dataset, built offline from Debian's package.

`prepare_fashion_mnist(data_dir)` writes the standard TFDS `fashion_mnist`
(same version, features, splits and record order as a build from the
upstream archives), as ArrayRecord files, from the four idx files of Debian's
`dataset-fashion-mnist`, so the quickstart and the tests run without network.
`builders.get_builder` calls it when the dataset is not prepared yet, after
hiding accelerators from TensorFlow; other callers on GPU or TPU machines
should call `quiet_tensorflow.hide_tf_from_accelerators()` first.
"""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from dssn_jax.data.quiet_tensorflow import tf
from dssn_jax.data.quiet_tensorflow import tfds

FASHION_MNIST_MANUAL_DIR = "/usr/share/datasets/fashion-mnist"


_FASHION_FILES = {
    # split: (images file, labels file, number of examples)
    "train": (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        60_000,
    ),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}


def _read_idx(path: os.PathLike | str, magic: int, count: int) -> np.ndarray:
  """Reads a gzipped idx file (images: magic 2051, labels: magic 2049)."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  header = np.frombuffer(data, ">u4", count=1 + ndim)
  if header[0] != magic or header[1] != count:
    raise ValueError(
        f"{path} is not an idx file with {count} items (header "
        f"{header.tolist()}, expected magic {magic})"
    )
  shape = tuple(int(d) for d in header[1:])
  return np.frombuffer(data, np.uint8, offset=4 * (1 + ndim)).reshape(shape)


@tf.function
def _encode_pngs(images):
  # The same op (and default compression) as tfds.features.Image, so the
  # PNG bytes equal those of a TFDS build from the upstream archives;
  # encoding in one graph is several times faster than TFDS's per-example
  # encoding.
  return tf.map_fn(
      tf.io.encode_png,
      images,
      fn_output_signature=tf.string,
      parallel_iterations=32,
  )


@functools.cache
def _debian_fashion_mnist_cls():
  """The registered TFDS `fashion_mnist` builder, reading local idx files.

  The upstream builder downloads from URLs whose registered checksums do not
  match Debian's recompressed archives. Its usual offline route,
  ``DownloadConfig(manual_dir=..., register_checksums=True)``, rewrites the
  checksum file inside the installed tensorflow_datasets package (and, in
  TFDS 4.9.10 without the ``importlib_resources`` backport, crashes while
  locating that file: tensorflow/datasets#11212). This unregistered
  subclass instead keeps the upstream name,
  version, features and example keys (so TFDS shuffles the records into the
  same order) and only replaces the download step with a read of
  ``dl_manager.manual_dir``. Reading the result back uses the normal
  ``tfds.builder("fashion_mnist")``.
  """
  upstream = tfds.builder_cls("fashion_mnist")

  class DebianFashionMNIST(upstream, skip_registration=True):
    name = "fashion_mnist"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "apt-get install dataset-fashion-mnist (files under "
        f"{FASHION_MNIST_MANUAL_DIR})"
    )
    # Nothing is downloaded, so no checksum registry (looking one up next
    # to this module also trips over TFDS's code_path on editable installs).
    url_infos = None

    def _split_generators(self, dl_manager):
      manual_dir = dl_manager.manual_dir
      return {
          split: self._generate_examples(
              num_examples=count,
              data_path=manual_dir / images,
              label_path=manual_dir / labels,
          )
          for split, (images, labels, count) in _FASHION_FILES.items()
      }

    def _generate_examples(self, num_examples, data_path, label_path):
      images = _read_idx(data_path, 2051, num_examples)[..., None]
      labels = _read_idx(label_path, 2049, num_examples).astype(np.int64)
      pngs = _encode_pngs(images).numpy()
      # Same keys as upstream: the index in the idx file.
      for index in range(num_examples):
        yield index, {"image": pngs[index], "label": labels[index]}

  return DebianFashionMNIST


def prepare_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike = FASHION_MNIST_MANUAL_DIR,
) -> str:
  """Builds TFDS ``fashion_mnist`` offline from Debian's dataset-fashion-mnist.

  Writes the standard ``fashion_mnist`` dataset (same version, features
  ``image`` uint8 (28, 28, 1) and ``label``, splits train/test) into
  ``data_dir`` (TFDS's default data dir if None), reading the four
  ``*-ubyte.gz`` files in ``manual_dir``. Does nothing if the dataset is
  already prepared there. Returns the prepared dataset directory.

  Raises:
    FileNotFoundError: the Debian files are missing.
  """
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  if builder.is_prepared():
    return os.fspath(builder.data_dir)
  manual_dir = os.fspath(manual_dir)
  missing = [
      os.path.join(manual_dir, fname)
      for images, labels, _ in _FASHION_FILES.values()
      for fname in (images, labels)
      if not os.path.isfile(os.path.join(manual_dir, fname))
  ]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST files not found in {manual_dir!r} (missing: "
        f"{', '.join(missing)}). Install them with `apt-get install "
        "dataset-fashion-mnist` (files go to "
        f"{FASHION_MNIST_MANUAL_DIR}) or pass manual_dir=."
    )
  # ArrayRecord, as builders.FILE_FORMAT (not imported: builders imports
  # this module).
  debian = _debian_fashion_mnist_cls()(
      data_dir=data_dir, file_format="array_record"
  )
  debian.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
  )
  return os.fspath(debian.data_dir)
