"""TFDS builders of the known datasets: data_dir checks, preparation, reading.

:func:`get_builder` returns the TFDS builder of a dataset in a data dir,
preparing the dataset first when it is not there yet, the way its row of the
dataset table (`datasets.DatasetInfo.preparation`) says: TFDS downloads
cifar10, fashion_mnist is built offline from Debian's package
(`fashion_mnist.py`), imagenet2012 from the ILSVRC tars in TFDS's manual dir.
Every read of a split goes through :func:`read_config`, so tf.data keeps the
order deterministic.
"""

from __future__ import annotations

import os

from dssn_jax.data import fashion_mnist
from dssn_jax.data.datasets import dataset_info
from dssn_jax.data.quiet_tensorflow import hide_tf_from_accelerators
from dssn_jax.data.quiet_tensorflow import tf
from dssn_jax.data.quiet_tensorflow import tfds


def check_data_dir(data_dir) -> None:
  """Raises FileNotFoundError unless data_dir (when given) is a directory.

  A mistyped data_dir would otherwise be created and the dataset prepared
  (or downloaded) there; creating the directory is how a user asks for that.
  """
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"data_dir {os.fspath(data_dir)!r} does not exist. Fix the path, "
        f"leave data_dir unset for TFDS's default, or create the directory "
        f"(mkdir -p {os.fspath(data_dir)}) to prepare the dataset there."
    )


def _download(builder, data_dir: str | None):
  del data_dir
  builder.download_and_prepare()
  return builder


def _from_debian_package(builder, data_dir: str | None):
  fashion_mnist.prepare_fashion_mnist(data_dir)
  return tfds.builder(builder.name, data_dir=data_dir)


def _from_manual_tars(builder, data_dir: str | None):
  """Builds imagenet2012 from the ILSVRC tars in TFDS's manual dir; their
  absence is a FileNotFoundError that says which files go where."""
  del data_dir
  manual_dir = os.path.join(builder.data_dir_root, "downloads", "manual")
  try:
    builder.download_and_prepare()
  except AssertionError as e:  # TFDS asserts that the manual files exist.
    raise FileNotFoundError(
        f"{builder.name} is not prepared in {builder.data_dir_root} and "
        f"cannot be built: put ILSVRC2012_img_train.tar and "
        f"ILSVRC2012_img_val.tar (from image-net.org) into {manual_dir} and "
        f"rerun, or point --config.data_dir at a TFDS data dir where "
        f"{builder.name} is prepared."
    ) from e
  return builder


# datasets.PREPARATIONS -> (builder, data_dir) -> prepared builder.
_PREPARE = {
    "download": _download,
    "debian_package": _from_debian_package,
    "manual_tars": _from_manual_tars,
}


def get_builder(name: str, data_dir) -> tfds.core.DatasetBuilder:
  """The TFDS builder of a known dataset, prepared in data_dir.

  Hides the accelerators from TensorFlow first (reading a dataset
  initializes TF's devices).

  Raises:
    ValueError: unknown dataset.
    FileNotFoundError: data_dir does not exist, or the files to prepare the
      dataset from are missing.
  """
  info = dataset_info(name)  # Validates the name.
  hide_tf_from_accelerators()
  check_data_dir(data_dir)
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    builder = _PREPARE[info.preparation](builder, data_dir)
  return builder


def deterministic_options() -> tf.data.Options:
  """tf.data options of every pipeline: outputs in a deterministic order."""
  options = tf.data.Options()
  options.deterministic = True
  return options


def read_config(**kwargs) -> tfds.ReadConfig:
  """A tfds.ReadConfig with deterministic tf.data options and without
  TFDS's automatic caching of small datasets."""
  return tfds.ReadConfig(
      try_autocache=False, options=deterministic_options(), **kwargs
  )


def num_examples(builder, split) -> int:
  """Examples in a (sub)split; falls back to the cardinality (mocked TFDS)."""
  try:
    n = builder.info.splits[split].num_examples
  except KeyError:  # No split metadata (e.g. under tfds.testing.mock_data).
    n = 0
  if n <= 0:
    ds = builder.as_dataset(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    n = int(ds.cardinality())
    if n < 0:
      raise RuntimeError(f"cannot count the examples of {builder.name}/{split}")
  return n


def decode_image(builder, encoded: tf.Tensor) -> tf.Tensor:
  """Decodes one stored image with the builder's own image feature."""
  return builder.info.features["image"].decode_example(encoded)
