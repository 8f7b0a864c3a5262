"""Preparing the known datasets with TFDS, in the ArrayRecord format.

:func:`get_builder` returns the TFDS builder of a dataset in a data dir,
preparing the dataset first when it is not there yet, the way its row of the
dataset table (`datasets.DatasetInfo.preparation`) says: TFDS downloads
cifar10, fashion_mnist is built offline from Debian's package
(`fashion_mnist.py`), imagenet2012 from the ILSVRC tars in TFDS's manual dir.
Every dataset is written as ArrayRecord files (:data:`FILE_FORMAT`), which
`sources` reads by index without TensorFlow. This is the only module (with
`fashion_mnist`) that needs TensorFlow: TFDS encodes and writes examples
with it.
"""

from __future__ import annotations

import os

from dssn_jax.data import fashion_mnist
from dssn_jax.data.datasets import dataset_info
from dssn_jax.data.quiet_tensorflow import hide_tf_from_accelerators
from dssn_jax.data.quiet_tensorflow import tfds
from dssn_jax.data.sources import check_data_dir

# The file format datasets are prepared in: random access by index.
FILE_FORMAT = "array_record"


def _download(builder, data_dir: str | None):
  del data_dir
  builder.download_and_prepare()
  return builder


def _from_debian_package(builder, data_dir: str | None):
  fashion_mnist.prepare_fashion_mnist(data_dir)
  return tfds.builder(builder.name, data_dir=data_dir, file_format=FILE_FORMAT)


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
  builder = tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT)
  if not builder.is_prepared():
    builder = _PREPARE[info.preparation](builder, data_dir)
  return builder
