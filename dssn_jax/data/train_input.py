"""Training batches: infinite, shuffled, augmented, resumable at any step.

Batch sizes are GLOBAL; a process (or training-data shard) yields
``batch_size // process_count`` rows of its own disjoint share of the split
(`sharding`).

Order and resuming
------------------
Epoch ``e`` of process ``p`` is a pure function of ``(seed, p, e)``: the TFDS
file order, the shuffle order and every augmentation draw come from seeds
derived with ``np.random.SeedSequence([seed, p, e])``. Augmentations are
keyed by ``(epoch seed, batch in the epoch)`` (numpy, on decoded batches) or
by ``(epoch seed, position of the example in the epoch)`` (TensorFlow
stateless ops, on JPEGs). Each epoch yields exactly ``steps_per_epoch =
n_local // local_batch`` batches (the remainder of the shuffled epoch is
dropped, so different examples are dropped each epoch). ``start_step=N``
therefore starts directly at epoch ``N // steps_per_epoch`` and skips
``(N % steps_per_epoch) * local_batch`` examples of it *before* they are
augmented: a resumed run sees bit-identical batches to an uninterrupted one.

Two ways to read an epoch (`datasets.DatasetInfo.in_memory`)
------------------------------------------------------------
* In memory (fashion_mnist, cifar10: <= 154 MB decoded): the split is read
  and decoded once into numpy arrays; every epoch is a full random
  permutation drawn by numpy, and the augmentation runs in numpy too, so no
  tf.data thread competes with the train step and skipping is free.
* Streamed (imagenet2012, or any dataset given a ``shuffle_buffer`` smaller
  than its split: a quick start that decodes no whole split before step 1):
  per-epoch file order plus a shuffle buffer of still-encoded images,
  decoded after the skip, so resuming mid-epoch reads (but does not decode)
  up to one epoch of records; resuming at an epoch boundary costs nothing.
  A batch augmentation (cifar10's crop and flip) is the same numpy function,
  applied to each decoded batch as in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
import itertools

import numpy as np

from dssn_jax.data import builders
from dssn_jax.data import sharding
from dssn_jax.data import transforms
from dssn_jax.data.datasets import dataset_info
from dssn_jax.data.datasets import DatasetInfo
from dssn_jax.data.quiet_tensorflow import tf
from dssn_jax.data.quiet_tensorflow import tfds

Batch = dict[str, np.ndarray]

_AUTOTUNE = tf.data.AUTOTUNE
# Examples per tf.data batch while an in-memory split is read.
_READ_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class _Stream:
  """What every batch of one process's training stream depends on."""

  info: DatasetInfo
  seed: int
  process_index: int
  local_batch: int
  steps_per_epoch: int

  def epoch_seeds(self, epoch: int) -> tuple[int, int, int]:
    """(file order, shuffle, augmentation) seeds of an epoch."""
    files, shuffle, augment = np.random.SeedSequence(
        [self.seed, self.process_index, epoch]
    ).generate_state(3, dtype=np.uint32)
    return int(files), int(shuffle), int(augment)

  def augment_batch(self, images: np.ndarray, augment_seed: int, b: int):
    """The dataset's batch augmentation of batch b of an epoch."""
    augment = transforms.BATCH_AUGMENTATIONS[self.info.train_augmentation]
    return augment(images, np.random.default_rng([augment_seed, b]))


def _from_step(
    stream: _Stream,
    start_step: int,
    epoch_batches: Callable[[int, int], Iterator[Batch]],
) -> Iterator[Batch]:
  """Batches start_step, start_step + 1, ... of epochs whose batches
  ``epoch_batches(epoch, first_batch)`` yields from first_batch on."""
  first_epoch, first_step = divmod(start_step, stream.steps_per_epoch)
  for epoch in itertools.count(first_epoch):
    yield from epoch_batches(epoch, first_step if epoch == first_epoch else 0)


def _in_memory_batches(
    builder, split, stream: _Stream, start_step: int
) -> Iterator[Batch]:
  """Training batches of a small split held decoded in host memory.

  The split is read and decoded once (by TFDS, into numpy); epoch e is the
  permutation of numpy's Generator seeded with the epoch's shuffle seed, cut
  into `steps_per_epoch` batches, and batch b of it is augmented with a
  Generator seeded by (augment seed, b). No tf.data runs while training: its
  threads would compete with the train step for the CPU, and its shuffle
  buffer refilled at every epoch.
  """
  parts = list(
      builder.as_dataset(split=split, read_config=builders.read_config())
      .map(lambda ex: (ex["image"], ex["label"]), num_parallel_calls=_AUTOTUNE)
      .batch(_READ_BATCH)
      .as_numpy_iterator()
  )
  images = np.concatenate([image for image, _ in parts])
  labels = np.concatenate([label for _, label in parts]).astype(np.int32)
  local_batch = stream.local_batch

  def epoch_batches(epoch: int, first_batch: int) -> Iterator[Batch]:
    _, shuffle_seed, augment_seed = stream.epoch_seeds(epoch)
    order = np.random.default_rng(shuffle_seed).permutation(len(images))
    for b in range(first_batch, stream.steps_per_epoch):
      rows = order[b * local_batch : (b + 1) * local_batch]
      image = stream.augment_batch(images[rows], augment_seed, b)
      yield {"image": image, "label": labels[rows]}

  return _from_step(stream, start_step, epoch_batches)


def _streamed_batches(
    builder, split, stream: _Stream, start_step: int, buffer: int
) -> Iterator[Batch]:
  """Training batches streamed by tf.data through a shuffle buffer of
  `buffer` encoded images (module docstring)."""
  info = stream.info
  local_batch = stream.local_batch
  jpeg_augment = transforms.JPEG_AUGMENTATIONS.get(info.train_augmentation)

  def prepare(position, encoded, label, augment_seed):
    if jpeg_augment is None:
      image = builders.decode_image(builder, encoded)
    else:  # Decodes only the crop window of the JPEG.
      seed = tf.stack([tf.constant(augment_seed, tf.int64), position])
      image = jpeg_augment(encoded, seed, info.input_shape[:2])
    image = tf.ensure_shape(image, info.input_shape)
    return {"image": image, "label": tf.cast(label, tf.int32)}

  def epoch_batches(epoch: int, first_batch: int) -> Iterator[Batch]:
    file_seed, shuffle_seed, augment_seed = stream.epoch_seeds(epoch)
    ds = builder.as_dataset(
        split=split,
        decoders={"image": tfds.decode.SkipDecoding()},
        shuffle_files=True,
        read_config=builders.read_config(shuffle_seed=file_seed),
    )
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(stream.steps_per_epoch * local_batch).enumerate()
    ds = ds.skip(first_batch * local_batch)  # Before decoding or augmenting.
    ds = ds.map(
        lambda position, ex: prepare(position, *ex, augment_seed=augment_seed),
        num_parallel_calls=_AUTOTUNE,
    )
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(_AUTOTUNE)
    ds = ds.with_options(builders.deterministic_options())
    for b, batch in enumerate(ds.as_numpy_iterator(), start=first_batch):
      if jpeg_augment is None:
        batch["image"] = stream.augment_batch(batch["image"], augment_seed, b)
      yield batch

  return _from_step(stream, start_step, epoch_batches)


def _train_split(info: DatasetInfo, process_index: int, process_count: int):
  """This process's share of the training split (the remainder dropped)."""
  return tfds.split_for_jax_process(
      info.train_split,
      process_index=process_index,
      process_count=process_count,
      drop_remainder=True,
  )


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
  builder = builders.get_builder(name, data_dir)
  split = _train_split(dataset_info(name), 0, process_count)
  return builders.num_examples(builder, split) // local_batch


def train_dataset(
    name: str,
    *,
    batch_size: int,
    seed: int,
    data_dir=None,
    start_step: int = 0,
    shuffle_buffer: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
  """Infinite, shuffled, augmented training batches for this process.

  Args:
    name: one of `datasets.KNOWN_DATASETS`.
    batch_size: global batch size; this process yields
      ``batch_size // process_count`` rows.
    seed: non-negative int; the whole stream is a function of it.
    data_dir: TFDS data dir (TFDS default if None).
    start_step: number of batches to skip, for resuming (module docstring):
      ``train_dataset(..., start_step=N)`` yields exactly the batches
      N, N+1, ... of ``train_dataset(..., start_step=0)``.
    shuffle_buffer: examples in the shuffle buffer (default: the dataset's
      ``shuffle_buffer``, the whole split for an in-memory dataset); fewer
      than the split streams an in-memory dataset too.
    process_index, process_count: default to JAX's.

  Returns:
    An iterator of ``{"image": uint8 (B, H, W, C), "label": int32 (B,)}``
    numpy batches, augmented as the dataset's ``train_augmentation`` says:
    none for fashion_mnist; random crop (zero padding 4) and horizontal flip
    for cifar10; random-resized crop to 224 and flip for imagenet2012
    (resized then rounded to uint8).
  """
  info = dataset_info(name)
  process_index, process_count = sharding.process_and_count(
      process_index, process_count
  )
  local_batch = sharding.local_batch_size(batch_size, process_count)
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  builder = builders.get_builder(name, data_dir)
  split = _train_split(info, process_index, process_count)
  num_local = builders.num_examples(builder, split)
  steps_per_epoch = num_local // local_batch
  if steps_per_epoch == 0:
    raise ValueError(
        f"{name}/{info.train_split} has {num_local} examples on this process, "
        f"fewer than one batch of {local_batch}"
    )
  stream = _Stream(info, int(seed), process_index, local_batch, steps_per_epoch)
  buffer = min(shuffle_buffer or info.shuffle_buffer or num_local, num_local)
  if info.in_memory and buffer == num_local:
    return _in_memory_batches(builder, split, stream, int(start_step))
  return _streamed_batches(builder, split, stream, int(start_step), buffer)
