"""Random access to a prepared split: TFDS ArrayRecord data sources, no
TensorFlow.

:func:`open_split` returns a split as a sequence of examples, read by
position (``source[i]``, ``source.__getitems__([i, j])``) from the split's
ArrayRecord files through ``tfds.data_source``'s builder API; images stay
encoded (PNG or JPEG bytes), to be decoded by `transforms` in numpy and PIL.
Importing ``tensorflow_datasets`` and reading a prepared dataset import no
TensorFlow; only preparing one does (`builders`, imported here only when a
dataset is missing, so a train or certify run on prepared data never loads
TensorFlow).
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import re
from typing import Any

from dssn_jax.data.datasets import dataset_info


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


def _tfds():
  # Imported when first needed: TFDS reads its registry at import (~0.5 s),
  # which code that needs no images (the converter, reports) should not pay.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def prepared_builder(name: str, data_dir):
  """The TFDS builder of a known dataset, prepared in data_dir (prepared
  first, with TensorFlow, when it is not there yet: `builders`).

  Raises:
    ValueError: unknown dataset.
    FileNotFoundError: data_dir does not exist, or the files to prepare the
      dataset from are missing.
  """
  dataset_info(name)  # Validates the name.
  check_data_dir(data_dir)
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  builder = _tfds().builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  from dssn_jax.data import builders  # pylint: disable=g-import-not-at-top

  return builders.get_builder(name, data_dir)


def check_split_name(builder, split: str) -> None:
  """Raises ValueError unless split is a plain split name of the builder."""
  if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", split):
    raise ValueError(
        f"split must be a plain split name such as 'test' (no slicing; use "
        f"start/skip/max_examples), got {split!r}"
    )
  known = list(builder.info.splits.keys())
  if known and split not in known:
    raise ValueError(f"{builder.name} has no split {split!r}; splits: {known}")


def open_split(name: str, split: str, data_dir) -> Sequence[dict[str, Any]]:
  """The examples of a plain split, by position, images still encoded.

  Args:
    name: one of `datasets.KNOWN_DATASETS`.
    split: a plain split name ("train", "test", "validation").
    data_dir: TFDS data dir (TFDS's default if None).

  Returns:
    A sequence (``len``, ``[i]``, ``__getitems__``) of dicts with "image"
    (encoded bytes), "label" and the dataset's other features; picklable,
    so Grain's worker processes can read from it.

  Raises:
    ValueError: unknown dataset or split, or a dataset prepared in a file
      format without random access (TFRecord: prepared by an earlier
      dssn-jax).
  """
  builder = prepared_builder(name, data_dir)
  check_split_name(builder, split)
  tfds = _tfds()
  try:
    return builder.as_data_source(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}
    )
  except NotImplementedError as e:  # Prepared as TFRecord.
    raise ValueError(
        f"{name} in {builder.data_dir} is prepared in the "
        f"{builder.info.file_format} format, which cannot be read by index. "
        f"Delete that directory (or point --config.data_dir at another) to "
        f"prepare it again as ArrayRecord."
    ) from e
