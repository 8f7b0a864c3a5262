"""Training batches: a Grain pipeline per training-data shard, infinite,
shuffled, augmented, checkpointable at any step (no TensorFlow).

Batch sizes are GLOBAL; a process (or training-data shard) yields
``batch_size // process_count`` rows of its own contiguous share of the
split (`sharding`; the remainder of the split is dropped).

Order and resuming
------------------
The pipeline is a ``grain.MapDataset``: batch ``i`` of shard ``p`` is a pure
function of ``(seed, p, i)``, computed on its own from random access to the
ArrayRecord data source (`sources`). Epoch ``e`` is a permutation of the
shard drawn by Grain's index shuffle with a seed derived from ``(seed, p)``
(and ``e``: every epoch reshuffles), cut into ``steps_per_epoch = n_local //
local_batch`` batches (the rest of the permutation is dropped, so different
examples are dropped each epoch). Batch ``i`` is read with one
``__getitems__`` call, decoded with PIL and augmented with the
``np.random.Generator`` that Grain's ``random_map`` derives from the seed
and ``i``: numpy's crop and flip on the decoded batch (cifar10), or a
random-resized crop of each JPEG (imagenet2012).

The iterator :func:`train_dataset` returns is Grain's: ``get_state()`` is a
small JSON-able dict that training saves with each checkpoint and
``set_state()`` restores, so a resumed run reads exactly the batches an
uninterrupted one would, without reading the ones before. ``start_step=N``
starts at batch N without a saved state. With ``decode_workers``
(imagenet2012), batches are made by Grain worker processes
(``mp_prefetch``), whose state is checkpointable the same way.
"""

from __future__ import annotations

import os

from absl import flags
import grain
import numpy as np

from dssn_jax.data import sharding
from dssn_jax.data import sources
from dssn_jax.data import transforms
from dssn_jax.data.datasets import dataset_info
from dssn_jax.data.datasets import DatasetInfo

Batch = dict[str, np.ndarray]

# Batches read ahead per process (threads of the training process, or per
# worker process).
PREFETCH_BATCHES = 4


def _shard(n: int, process_index: int, process_count: int) -> range:
  """The positions of one process's contiguous, equal share of n examples."""
  per_process = n // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def train_steps_per_epoch(
    name: str,
    *,
    batch_size: int,
    data_dir=None,
    process_count: int | None = None,
) -> int:
  """Batches per epoch of :func:`train_dataset` (the same on every process)."""
  _, process_count = sharding.process_and_count(0, process_count)
  local_batch = sharding.local_batch_size(batch_size, process_count)
  source = sources.open_split(name, dataset_info(name).train_split, data_dir)
  return len(_shard(len(source), 0, process_count)) // local_batch


def _load_batch(source, info: DatasetInfo):
  """(positions, rng) -> the decoded, augmented batch at those positions."""
  channels, size = info.input_shape[-1], info.input_shape[:2]
  jpeg_augment = transforms.JPEG_AUGMENTATIONS.get(info.train_augmentation)

  def load(positions: np.ndarray, rng: np.random.Generator) -> Batch:
    records = source.__getitems__([int(p) for p in positions])
    if jpeg_augment is not None:
      image = np.stack([jpeg_augment(r["image"], rng, size) for r in records])
    else:
      image = np.stack(
          [transforms.decode(r["image"], channels) for r in records]
      )
      augment = transforms.BATCH_AUGMENTATIONS[info.train_augmentation]
      image = augment(image, rng)
    label = np.array([int(r["label"]) for r in records], np.int32)
    return {"image": image, "label": label}

  return load


def _let_grain_read_its_flags() -> None:
  """Grain reads its own absl flags (worker profiling) when it starts worker
  processes, which fails in a program that has parsed none (a notebook, a
  test, a library caller without absl.app): such a program gets the
  defaults, as an entry point without those flags does."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _workers(info: DatasetInfo, workers: int | None) -> int:
  workers = info.decode_workers if workers is None else workers
  return max(1, (os.cpu_count() or 2) - 1) if workers < 0 else workers


def train_dataset(
    name: str,
    *,
    batch_size: int,
    seed: int,
    data_dir=None,
    start_step: int = 0,
    workers: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
  """Infinite, shuffled, augmented training batches for this process.

  Args:
    name: one of `datasets.KNOWN_DATASETS`.
    batch_size: global batch size; this process yields
      ``batch_size // process_count`` rows.
    seed: non-negative int below 2**32; the whole stream is a function of
      it.
    data_dir: TFDS data dir (TFDS default if None).
    start_step: the first batch: ``train_dataset(..., start_step=N)`` yields
      exactly the batches N, N+1, ... of ``train_dataset(..., start_step=0)``
      (as does the latter after ``set_state`` of its state after N batches).
    workers: Grain worker processes that make the batches (default: the
      dataset's ``decode_workers``; 0: threads of this process).
    process_index, process_count: default to JAX's.

  Returns:
    A Grain iterator (``get_state``/``set_state``) of ``{"image": uint8 (B,
    H, W, C), "label": int32 (B,)}`` numpy batches, augmented as the
    dataset's ``train_augmentation`` says: none for fashion_mnist; random
    crop (zero padding 4) and horizontal flip for cifar10; random-resized
    crop to 224 and flip for imagenet2012 (resized then rounded to uint8).
  """
  info = dataset_info(name)
  process_index, process_count = sharding.process_and_count(
      process_index, process_count
  )
  local_batch = sharding.local_batch_size(batch_size, process_count)
  if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  source = sources.open_split(name, info.train_split, data_dir)
  shard = _shard(len(source), process_index, process_count)
  steps_per_epoch = len(shard) // local_batch
  if steps_per_epoch == 0:
    raise ValueError(
        f"{name}/{info.train_split} has {len(shard)} examples on this "
        f"process, fewer than one batch of {local_batch}"
    )
  shuffle_seed, augment_seed = (
      int(s)
      for s in np.random.SeedSequence([seed, process_index]).generate_state(
          2, dtype=np.uint32
      )
  )
  n_local, epoch_len = len(shard), steps_per_epoch * local_batch
  # order[e * n_local + k]: position k of epoch e's permutation.
  order = grain.MapDataset.range(n_local).shuffle(seed=shuffle_seed).repeat()

  def position(i: int, _) -> int:
    epoch, k = divmod(i, epoch_len)
    return shard.start + order[epoch * n_local + k]

  ds = (
      grain.MapDataset.range(epoch_len)
      .repeat()
      .map_with_index(position)
      .batch(local_batch)
      .random_map(_load_batch(source, info), seed=augment_seed)
  )
  ds = ds[int(start_step) :].to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=PREFETCH_BATCHES)
  )
  workers = _workers(info, workers)
  if workers:
    _let_grain_read_its_flags()
    ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=PREFETCH_BATCHES
        )
    )
  return iter(ds)
