"""Evaluation batches: a subset of a split by original index, padded.

``eval_dataset`` yields the examples with original dataset index
``start, start + skip, ...`` (at most ``max_examples``), in increasing index
order, then pads the last batch with ``mask=False`` rows (index -1, zero
image, label 0), so that every example counts exactly once. The index is
(`datasets.DatasetInfo.index_feature`):

* cifar10: the original position in the CIFAR-10 binary batches (the order
  of torchvision's ``CIFAR10``, which the reference PyTorch code iterates),
  parsed from the TFDS ``id`` feature, which is ``"test_00042"`` /
  ``"train_01234"`` (``"{split}_{index:05d}"``). TFDS stores examples in a
  shuffled order, so the selected subset is read and sorted by id (cheap at
  CIFAR sizes).
* fashion_mnist, imagenet2012: the position in the TFDS split. TFDS shuffles
  examples (by hashed key) when it writes a dataset, so this is *not* the
  order of the original idx / ILSVRC files; it is stable for a given TFDS
  version (imagenet2012 also carries ``file_name``, which is not used).

Batch sizes are GLOBAL: with several processes the subset is cut into
``process_count`` contiguous chunks of ``ceil(n / process_count)`` examples;
every process yields the same number of batches of ``batch_size //
process_count`` rows (padding as needed), as a multi-host jit requires.
"""

from __future__ import annotations

from collections.abc import Iterator
import re

import numpy as np

from dssn_jax.data import builders
from dssn_jax.data import sharding
from dssn_jax.data import transforms
from dssn_jax.data.datasets import dataset_info
from dssn_jax.data.datasets import DatasetInfo
from dssn_jax.data.quiet_tensorflow import tf
from dssn_jax.data.quiet_tensorflow import tfds

_AUTOTUNE = tf.data.AUTOTUNE


class EvalBatches(Iterator):
  """Iterator over padded evaluation batches of one process.

  ``len()`` is the number of batches this process yields (the same on every
  process). Attributes: ``num_examples`` (subset size over all processes),
  ``num_local_examples`` (real rows on this process), ``indices`` (this
  process's original indices, in order).
  """

  def __init__(
      self, ds: tf.data.Dataset, *, num_examples, indices, num_batches
  ):
    self._iterator = ds.as_numpy_iterator()
    self.num_examples = num_examples
    self.indices = indices
    self.num_local_examples = len(indices)
    self.num_batches = num_batches

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def __len__(self) -> int:
    return self.num_batches


def _check_split_name(builder, split: str) -> None:
  if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", split):
    raise ValueError(
        f"split must be a plain split name such as 'test' (no slicing; use "
        f"start/skip/max_examples), got {split!r}"
    )
  known = list(builder.info.splits.keys())
  if known and split not in known:
    raise ValueError(f"{builder.name} has no split {split!r}; splits: {known}")


def _subset(name, split, start, skip, max_examples, data_dir):
  """Returns (builder, split, range of original indices) of an eval subset."""
  info = dataset_info(name)
  split = info.eval_split if split is None else split
  for arg, value, low in (("start", start, 0), ("skip", skip, 1)):
    if not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
  if max_examples is not None and (
      not isinstance(max_examples, (int, np.integer)) or max_examples < 0
  ):
    raise ValueError(f"max_examples must be None or >= 0, got {max_examples!r}")
  builder = builders.get_builder(name, data_dir)
  _check_split_name(builder, split)
  size = builders.num_examples(builder, split)
  indices = range(int(start), size, int(skip))[:max_examples]
  if not indices:
    raise ValueError(
        f"empty evaluation subset: {name}/{split} has {size} examples, "
        f"start={start}, skip={skip}, max_examples={max_examples}"
    )
  return builder, split, indices


def num_examples_in_subset(
    name: str,
    *,
    split: str | None = None,
    start: int = 0,
    skip: int = 1,
    max_examples: int | None = None,
    data_dir=None,
) -> int:
  """Number of examples :func:`eval_dataset` yields over all processes."""
  return len(_subset(name, split, start, skip, max_examples, data_dir)[2])


def _examples_by_position(
    builder, split: str, indices: range
) -> tf.data.Dataset:
  """Examples at TFDS-split positions `indices` (a range), as index-tagged
  dicts with the image still encoded."""
  first, stop, skip = indices[0], indices[-1] + 1, indices.step
  ds = builder.as_dataset(
      split=f"{split}[{first}:{stop}]",
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=builders.read_config(),
  )
  ds = ds.take(stop - first).enumerate()
  ds = ds.filter(lambda pos, ex: pos % skip == 0)
  ds = ds.map(
      lambda pos, ex: {
          "image": ex["image"],
          "label": ex["label"],
          "index": pos + first,
      }
  )
  # Raises at the end of iteration if examples are missing.
  return ds.apply(tf.data.experimental.assert_cardinality(len(indices)))


def _parse_index(name: str, example_id: bytes) -> int:
  """The index of an id '<split>_<index>' such as b'test_00042'."""
  text = (
      example_id.decode() if isinstance(example_id, bytes) else str(example_id)
  )
  match = re.fullmatch(r"[A-Za-z]+_(\d+)", text)
  if not match:
    raise ValueError(
        f"unexpected {name} id {text!r}; expected '<split>_<index>' like "
        "'test_00042'"
    )
  return int(match.group(1))


def _examples_by_id(
    builder, info: DatasetInfo, split: str, indices: range
) -> tf.data.Dataset:
  """Examples whose `info.index_feature` holds an index in `indices`, sorted
  by index, with the image still encoded (reads the whole split: small
  datasets)."""
  id_key = info.index_feature
  ds = builder.as_dataset(
      split=split,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=builders.read_config(),
  )
  found = {}
  for ex in ds.as_numpy_iterator():
    index = _parse_index(info.name, ex[id_key])
    if index in indices:
      if index in found:
        raise ValueError(
            f"duplicate {info.name} id {ex[id_key]!r} in split {split!r}"
        )
      found[index] = (ex["image"], ex["label"])
  missing = [i for i in indices if i not in found]
  if missing:
    raise ValueError(
        f"{info.name}/{split}: no example with index {missing[:5]} (ids are "
        "expected to cover 0..n-1)"
    )
  return tf.data.Dataset.from_tensor_slices(
      {
          "image": np.array([found[i][0] for i in indices], dtype=object),
          "label": np.array([found[i][1] for i in indices], dtype=np.int64),
          "index": np.array(indices, dtype=np.int64),
      }
  )


def _preprocess(builder, info: DatasetInfo):
  """Per-example eval preprocessing: decoding, or the dataset's resize and
  centre crop, to a masked uint8 example."""

  def preprocess(ex):
    if info.eval_resize is None:
      image = builders.decode_image(builder, ex["image"])
    else:
      image = transforms.resize_shorter_and_centre_crop(
          ex["image"], info.eval_resize, info.input_shape[:2]
      )
    return {
        "image": tf.ensure_shape(image, info.input_shape),
        "label": tf.cast(ex["label"], tf.int32),
        "index": tf.cast(ex["index"], tf.int64),
        "mask": tf.constant(True),
    }

  return preprocess


def eval_dataset(
    name: str,
    *,
    split: str | None = None,
    start: int = 0,
    skip: int = 1,
    max_examples: int | None = None,
    batch_size: int,
    data_dir=None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> EvalBatches:
  """Deterministic, padded evaluation batches of one process.

  Selects the examples with original index ``start, start + skip, ...`` (at
  most ``max_examples``) of ``split`` (default: the eval split), in index
  order; see the module docstring for what the index is per dataset.

  Args:
    batch_size: global batch size; this process yields
      ``batch_size // process_count`` rows per batch.

  Returns:
    An :class:`EvalBatches` iterator of ``{"image": uint8 (B, H, W, C),
    "label": int32, "index": int64, "mask": bool}``; padding rows have
    ``mask=False``, ``index=-1``, ``label=0`` and a zero image. Images of a
    dataset with an ``eval_resize`` (imagenet2012: 256) are resized (shorter
    side to it, rounded to uint8) and centre-cropped to ``input_shape``.

  Raises:
    ValueError: unknown dataset, bad arguments, or an empty subset.
  """
  info = dataset_info(name)
  process_index, process_count = sharding.process_and_count(
      process_index, process_count
  )
  local_batch = sharding.local_batch_size(batch_size, process_count)
  builder, split, indices = _subset(
      name, split, start, skip, max_examples, data_dir
  )
  per_process = -(-len(indices) // process_count)
  local = indices[
      process_index * per_process : (process_index + 1) * per_process
  ]
  num_batches = -(-per_process // local_batch)

  padding = {
      "image": tf.zeros(info.input_shape, tf.uint8),
      "label": tf.constant(0, tf.int32),
      "index": tf.constant(-1, tf.int64),
      "mask": tf.constant(False),
  }
  ds = tf.data.Dataset.from_tensors(padding).repeat(
      num_batches * local_batch - len(local)
  )
  if local:
    if info.index_feature is None:
      examples = _examples_by_position(builder, split, local)
    else:
      examples = _examples_by_id(builder, info, split, local)
    examples = examples.map(
        _preprocess(builder, info), num_parallel_calls=_AUTOTUNE
    )
    ds = examples.concatenate(ds)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(_AUTOTUNE)
  return EvalBatches(
      ds.with_options(builders.deterministic_options()),
      num_examples=len(indices),
      indices=local,
      num_batches=num_batches,
  )
