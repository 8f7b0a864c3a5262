"""Evaluation batches: a subset of a split by original index, padded, read
by index from the split's ArrayRecord data source (no TensorFlow).

``eval_dataset`` yields the examples with original dataset index
``start, start + skip, ...`` (at most ``max_examples``), in increasing index
order, then pads the last batch with ``mask=False`` rows (index -1, zero
image, label 0), so that every example counts exactly once. Only the
examples of the subset (of this process) are read: a run that starts at
image 9,000, or resumes after its first 9,000 rows, reads no image before
those. The index is (`datasets.DatasetInfo.index_feature`):

* cifar10: the original position in the CIFAR-10 binary batches (the order
  of torchvision's ``CIFAR10``, which the reference PyTorch code iterates),
  parsed from the TFDS ``id`` feature, which is ``"test_00042"`` /
  ``"train_01234"`` (``"{split}_{index:05d}"``). TFDS stores examples in a
  shuffled order, so the ids of the whole split are read once (their
  records, not decoded: under a second for 10,000) to map an index to its
  stored position.
* fashion_mnist, imagenet2012: the position in the TFDS split. TFDS shuffles
  examples (by hashed key) when it writes a dataset, so this is *not* the
  order of the original idx / ILSVRC files; it is stable for a given TFDS
  version (imagenet2012 also carries ``file_name``, which is not used).

Batch sizes are GLOBAL: with several processes the subset is cut into
``process_count`` contiguous chunks of ``ceil(n / process_count)`` examples;
every process yields the same number of batches of ``batch_size //
process_count`` rows (padding as needed), as a multi-host jit requires.
Images are read and decoded by Grain in a few threads, ahead of the batch
being certified.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import re

import grain
import numpy as np

from dssn_jax.data import sharding
from dssn_jax.data import sources
from dssn_jax.data import transforms
from dssn_jax.data.datasets import dataset_info
from dssn_jax.data.datasets import DatasetInfo

# Grain threads that read and decode examples ahead of the consumer.
READ_THREADS = 4


class EvalBatches(Iterator):
  """Iterator over padded evaluation batches of one process.

  ``len()`` is the number of batches this process yields (the same on every
  process). Attributes: ``num_examples`` (subset size over all processes),
  ``num_local_examples`` (real rows on this process), ``indices`` (this
  process's original indices, in order).
  """

  def __init__(
      self, examples: grain.MapDataset, batch: int, *, num_examples, indices
  ):
    self._examples = examples
    self._batch = batch
    self._iterator = None  # Reading starts at the first next().
    self.num_examples = num_examples
    self.indices = indices
    self.num_local_examples = len(indices)
    self.num_batches = len(examples) // batch

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      # Threads read and decode single examples; batched in order.
      self._iterator = iter(
          self._examples.to_iter_dataset(
              grain.ReadOptions(num_threads=READ_THREADS)
          ).batch(self._batch)
      )
    return next(self._iterator)

  def __len__(self) -> int:
    return self.num_batches


def _subset(name, split, start, skip, max_examples, data_dir):
  """Returns (data source, split, range of original indices) of a subset."""
  info = dataset_info(name)
  split = info.eval_split if split is None else split
  for arg, value, low in (("start", start, 0), ("skip", skip, 1)):
    if not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
  if max_examples is not None and (
      not isinstance(max_examples, (int, np.integer)) or max_examples < 0
  ):
    raise ValueError(f"max_examples must be None or >= 0, got {max_examples!r}")
  source = sources.open_split(name, split, data_dir)
  size = len(source)
  indices = range(int(start), size, int(skip))[:max_examples]
  if not indices:
    raise ValueError(
        f"empty evaluation subset: {name}/{split} has {size} examples, "
        f"start={start}, skip={skip}, max_examples={max_examples}"
    )
  return source, split, indices


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


def _parse_index(name: str, example_id) -> int:
  """The index of an id '<split>_<index>' such as b'test_00042'."""
  if isinstance(example_id, np.ndarray):
    example_id = example_id.item()
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


def _positions_by_id(
    source: Sequence, info: DatasetInfo, split: str, indices: range
) -> list[int]:
  """The stored positions of the examples whose `info.index_feature` holds
  the indices `indices` (reads every record of the split, decodes none)."""
  id_key = info.index_feature
  found = {}
  records = source.__getitems__(list(range(len(source))))
  for position, ex in enumerate(records):
    index = _parse_index(info.name, ex[id_key])
    if index in indices:
      if index in found:
        raise ValueError(
            f"duplicate {info.name} id {ex[id_key]!r} in split {split!r}"
        )
      found[index] = position
  missing = [i for i in indices if i not in found]
  if missing:
    raise ValueError(
        f"{info.name}/{split}: no example with index {missing[:5]} (ids are "
        "expected to cover 0..n-1)"
    )
  return [found[i] for i in indices]


def eval_image(info: DatasetInfo, encoded: bytes) -> np.ndarray:
  """An evaluation image: decoded, or the dataset's resize and centre crop;
  uint8 ``info.input_shape``."""
  if info.eval_resize is None:
    image = transforms.decode(encoded, info.input_shape[-1])
  else:
    image = transforms.resize_shorter_and_centre_crop(
        encoded, info.eval_resize, info.input_shape[:2]
    )
  if image.shape != info.input_shape:
    raise ValueError(
        f"{info.name} image of shape {image.shape}, expected "
        f"{info.input_shape}"
    )
  return image


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
  source, split, indices = _subset(
      name, split, start, skip, max_examples, data_dir
  )
  per_process = -(-len(indices) // process_count)
  local = indices[
      process_index * per_process : (process_index + 1) * per_process
  ]
  num_batches = -(-per_process // local_batch)
  if info.index_feature is None or not local:
    positions = list(local)
  else:
    positions = _positions_by_id(source, info, split, local)

  def example(i: int) -> dict[str, np.ndarray]:
    if i >= len(local):
      return {
          "image": np.zeros(info.input_shape, np.uint8),
          "label": np.int32(0),
          "index": np.int64(-1),
          "mask": np.bool_(False),
      }
    ex = source[positions[i]]
    return {
        "image": eval_image(info, ex["image"]),
        "label": np.int32(ex["label"]),
        "index": np.int64(local[i]),
        "mask": np.bool_(True),
    }

  examples = grain.MapDataset.range(num_batches * local_batch).map(example)
  return EvalBatches(
      examples, local_batch, num_examples=len(indices), indices=local
  )
