"""TFDS input pipelines whose pixels stay exactly on the 1/255 grid.

The DSSN certificate only holds for inputs on the grid {0, 1/q, ..., 1} with
q = 255, so images stay ``uint8`` from the TFDS records to the host batch; the
jitted step divides by 255 on device. Every transform below either moves
whole pixels (pad, crop, flip) or resizes and then rounds back to ``uint8``.

TensorFlow is only the input pipeline: every public builder first calls
:func:`hide_tf_from_accelerators`, and ``dssn_jax/__init__.py`` does not import
this module, so ``import dssn_jax`` stays free of TensorFlow.

Public API::

    # DatasetInfo(num_classes, input_shape, mean, std, ...)
    info = dataset_info("cifar10")
    it = train_dataset("cifar10", batch_size=64, seed=0, start_step=0)
    batch = next(it)  # {"image": uint8 (B,H,W,C), "label": int32 (B,)}
    ev = eval_dataset("cifar10", start=0, skip=20, batch_size=100)
    # batches on this process, subset size (all processes)
    len(ev), ev.num_examples
    batch = next(ev)  # + "index": int64 (B,), "mask": bool (B,)
    num_examples_in_subset("cifar10", skip=20)

Batch sizes are GLOBAL (over all JAX processes); each process yields
``batch_size // jax.process_count()`` rows from its own disjoint share of the
data, ready for ``jax.make_array_from_process_local_data``.

Training order and resuming
---------------------------
Epoch ``e`` of process ``p`` is a pure function of ``(seed, p, e)``: the TFDS
file order, the shuffle order and every augmentation draw come from seeds
derived with ``np.random.SeedSequence([seed, p, e])``; augmentations are
keyed by ``(epoch seed, position of the example in the epoch)`` (stateless TF
ops) or ``(epoch seed, batch in the epoch)`` (numpy, in-memory datasets).
Each epoch yields exactly ``steps_per_epoch = n_local // local_batch`` batches
(the remainder of the shuffled epoch is dropped, so different examples
are dropped each epoch). ``start_step=N`` therefore starts directly at epoch
``N // steps_per_epoch`` and skips ``(N % steps_per_epoch) * local_batch``
examples of it *before* they are augmented: a resumed run sees bit-identical
batches to an uninterrupted one.

fashion_mnist and cifar10 are read and decoded once into numpy arrays in host
memory (<= 150 MB); every epoch is a full random permutation of them drawn by
numpy, and cifar10's augmentation runs in numpy too, so no tf.data thread
competes with the train step and skipping is free (a smaller
``shuffle_buffer`` streams them like imagenet2012). imagenet2012 streams:
per-epoch file order plus a shuffle buffer of still-encoded JPEGs, decoded
after the skip, so resuming mid-epoch reads (but does not decode) up to one
epoch of records; resuming at an epoch boundary costs nothing.

Evaluation subsets and indices
------------------------------
``eval_dataset`` yields the examples with original dataset index
``start, start + skip, ...`` (at most ``max_examples``), in increasing index
order, then pads the last batch with ``mask=False`` rows (index -1, zero image,
label 0), so that every example counts exactly once. The index is:

* cifar10: the original position in the CIFAR-10 binary batches (the order of
  torchvision's ``CIFAR10``, which the reference PyTorch code iterates),
  parsed from the TFDS ``id`` feature, which is ``"test_00042"`` /
  ``"train_01234"`` (``"{split}_{index:05d}"``). TFDS stores examples in a
  shuffled order, so the selected subset is read and sorted by id (cheap at
  CIFAR sizes).
* fashion_mnist, imagenet2012: the position in the TFDS split. TFDS shuffles
  examples (by hashed key) when it writes a dataset, so this is *not* the order
  of the original idx / ILSVRC files; it is stable for a given TFDS version
  (imagenet2012 also carries ``file_name``, which is not used).

With several processes the subset is cut into ``process_count`` contiguous
chunks of ``ceil(n / process_count)`` examples; every process yields the same
number of batches (padding as needed), as a multi-host jit requires.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator

from absl import logging
import numpy as np

from dssn_jax.data import fashion_mnist
from dssn_jax.data.quiet_tensorflow import tf
from dssn_jax.data.quiet_tensorflow import tfds
from dssn_jax.data.datasets import dataset_info
from dssn_jax.data.datasets import DatasetInfo
from dssn_jax.data.datasets import KNOWN_DATASETS

__all__ = [
    "DatasetInfo",
    "EvalBatches",
    "KNOWN_DATASETS",
    "dataset_info",
    "eval_dataset",
    "hide_tf_from_accelerators",
    "num_examples_in_subset",
    "train_dataset",
    "train_steps_per_epoch",
]

_AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------------------
# Dataset metadata.


# Datasets whose original index is parsed from a string feature.
_INDEX_FROM_ID = {"cifar10": "id"}

# Shuffle buffers hold *encoded* images (decoding happens after the shuffle):
# the whole split for the small datasets, ~1 GB of JPEGs for ImageNet.
_SHUFFLE_BUFFER = {
    "fashion_mnist": 60_000,
    "cifar10": 50_000,
    "imagenet2012": 10_000,
}
# Small enough (<= 150 MB) to keep decoded in memory across epochs.
_CACHE_DECODED = ("fashion_mnist", "cifar10")

_IMAGENET_EVAL_RESIZE = 256


def hide_tf_from_accelerators() -> None:
  """Makes GPUs and TPUs invisible to TensorFlow (it only feeds the input).

  Without this, TF would grab all GPU memory that JAX needs. Must run before
  TensorFlow initializes its devices; later calls are no-ops (with a warning
  if TF already sees an accelerator).
  """
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:  # Devices already initialized.
      if tf.config.get_visible_devices(kind):
        logging.warning(
            "TensorFlow already initialized its %s devices; could not hide "
            "them. Call dssn_jax.data.input_pipeline.hide_tf_from_accelerators() "
            "earlier.",
            kind,
        )


# --------------------------------------------------------------------------
# Shared helpers.


def _process(
    process_index: int | None, process_count: int | None
) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = (
        jax.process_index() if process_index is None else process_index
    )
    process_count = (
        jax.process_count() if process_count is None else process_count
    )
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} not in "
        f"[0, process_count={process_count})"
    )
  return process_index, process_count


def _local_batch_size(batch_size: int, process_count: int) -> int:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(
        f"batch_size must be a positive integer, got {batch_size!r}"
    )
  if batch_size % process_count:
    raise ValueError(
        f"batch_size={batch_size} (global) is not divisible by the "
        f"{process_count} processes"
    )
  return int(batch_size) // process_count


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


def _get_builder(name: str, data_dir) -> tfds.core.DatasetBuilder:
  dataset_info(name)  # Validates the name.
  hide_tf_from_accelerators()
  check_data_dir(data_dir)
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if name == "fashion_mnist":
      fashion_mnist.prepare_fashion_mnist(data_dir)
      builder = tfds.builder(name, data_dir=data_dir)
    elif name == "imagenet2012":
      _prepare_imagenet(builder)
    else:
      builder.download_and_prepare()  # cifar10 downloads.
  return builder


def _prepare_imagenet(builder) -> None:
  """Builds imagenet2012 from the ILSVRC tars in TFDS's manual dir; their
  absence is a FileNotFoundError that says which files go where."""
  manual_dir = os.path.join(builder.data_dir_root, "downloads", "manual")
  try:
    builder.download_and_prepare()
  except AssertionError as e:  # TFDS asserts that the manual files exist.
    raise FileNotFoundError(
        f"imagenet2012 is not prepared in {builder.data_dir_root} and cannot "
        f"be built: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
        f"(from image-net.org) into {manual_dir} and rerun, or point "
        f"--config.data_dir at a TFDS data dir where imagenet2012 is "
        f"prepared."
    ) from e


def _num_examples(builder, split) -> int:
  """Examples in a (sub)split; falls back to the cardinality (mocked TFDS)."""
  try:
    n = builder.info.splits[split].num_examples
  except (
      KeyError
  ):  # Split metadata unknown (e.g. under tfds.testing.mock_data).
    n = 0
  if n <= 0:
    ds = builder.as_dataset(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    n = int(ds.cardinality())
    if n < 0:
      raise RuntimeError(f"cannot count the examples of {builder.name}/{split}")
  return n


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds a float image (0..255 scale) back onto the uint8 grid."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(image: tf.Tensor, size) -> tf.Tensor:
  # Bilinear with antialiasing, like torchvision's PIL resize, then rounded.
  return _to_uint8(
      tf.image.resize(image, size, method="bilinear", antialias=True)
  )


def _decode(builder, encoded: tf.Tensor) -> tf.Tensor:
  return builder.info.features["image"].decode_example(encoded)


# --------------------------------------------------------------------------
# Training.


def _cifar_augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random 32x32 crop of the 4-pixel zero-padded image, random h-flip."""
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2)
  )
  padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
  image = tf.image.stateless_random_crop(padded, (32, 32, 3), seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _imagenet_train(encoded: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random-resized crop to 224 (area 8-100%, aspect 3/4-4/3) and h-flip."""
  box_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2)
  )
  shape = tf.image.extract_jpeg_shape(encoded)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
      seed=box_seed,
      min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
  )
  offset_y, offset_x, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(size)
  window = tf.stack([offset_y, offset_x, height, width])
  image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
  image = _resize(image, (224, 224))
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _epoch_seeds(
    seed: int, process_index: int, epoch: int
) -> tuple[int, int, int]:
  files, shuffle, augment = np.random.SeedSequence(
      [seed, process_index, epoch]
  ).generate_state(3, dtype=np.uint32)
  return int(files), int(shuffle), int(augment)


def _cifar_augment_numpy(
    images: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
  """`_cifar_augment` on a (B, 32, 32, 3) uint8 batch in numpy: per image a
  random 32x32 crop of the 4-pixel zero-padded image and a random h-flip."""
  n, size = images.shape[0], images.shape[1]
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  top, left = rng.integers(0, 9, n), rng.integers(0, 9, n)
  flip = rng.random(n) < 0.5
  rows = top[:, None] + np.arange(size)
  cols = left[:, None] + np.arange(size)
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _in_memory_batches(
    builder,
    split,
    name: str,
    *,
    seed: int,
    process_index: int,
    local_batch: int,
    steps_per_epoch: int,
    start_step: int,
) -> Iterator[dict[str, np.ndarray]]:
  """Training batches of a small split held decoded in host memory.

  The split is read and decoded once (by TFDS, into numpy); epoch e is the
  permutation of numpy's Generator seeded with the epoch's shuffle seed, cut
  into `steps_per_epoch` batches, and batch b of it is augmented (cifar10)
  with a Generator seeded by (augment seed, b). Every batch is thus a pure
  function of (seed, process_index, epoch, b), and skipping to any step is
  free. No tf.data runs while training: its threads would compete with the
  train step for the CPU, and its shuffle buffer refilled at every epoch.
  """
  parts = list(
      builder.as_dataset(
          split=split,
          read_config=tfds.ReadConfig(try_autocache=False, options=_options()),
      )
      .map(lambda ex: (ex["image"], ex["label"]), num_parallel_calls=_AUTOTUNE)
      .batch(4096)
      .as_numpy_iterator()
  )
  images = np.concatenate([image for image, _ in parts])
  labels = np.concatenate([label for _, label in parts]).astype(np.int32)
  first_epoch, first_step = divmod(start_step, steps_per_epoch)

  def batches():
    for epoch in itertools.count(first_epoch):
      _, shuffle_seed, augment_seed = _epoch_seeds(seed, process_index, epoch)
      order = np.random.default_rng(shuffle_seed).permutation(len(images))
      for b in range(
          first_step if epoch == first_epoch else 0, steps_per_epoch
      ):
        rows = order[b * local_batch : (b + 1) * local_batch]
        image = images[rows]
        if name == "cifar10":
          image = _cifar_augment_numpy(
              image, np.random.default_rng([augment_seed, b])
          )
        yield {"image": image, "label": labels[rows]}

  return batches()


def train_steps_per_epoch(
    name: str,
    *,
    batch_size: int,
    data_dir=None,
    process_count: int | None = None,
) -> int:
  """Batches per epoch of :func:`train_dataset` (the same on every process)."""
  _, process_count = _process(0, process_count)
  local_batch = _local_batch_size(batch_size, process_count)
  builder = _get_builder(name, data_dir)
  split = tfds.split_for_jax_process(
      dataset_info(name).train_split,
      process_index=0,
      process_count=process_count,
      drop_remainder=True,
  )
  return _num_examples(builder, split) // local_batch


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
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite, shuffled, augmented training batches for this process.

  Args:
    name: one of :data:`KNOWN_DATASETS`.
    batch_size: global batch size; this process yields
      ``batch_size // process_count`` rows.
    seed: non-negative int; the whole stream is a function of it.
    data_dir: TFDS data dir (TFDS default if None).
    start_step: number of batches to skip, for resuming (see module doc):
      ``train_dataset(..., start_step=N)`` yields exactly the batches
      N, N+1, ... of ``train_dataset(..., start_step=0)``.
    shuffle_buffer: examples in the shuffle buffer (default: whole split for
      fashion_mnist/cifar10, 10,000 for imagenet2012).
    process_index, process_count: default to JAX's.

  Returns:
    An iterator of ``{"image": uint8 (B, H, W, C), "label": int32 (B,)}``
    numpy batches. Augmentation: none for fashion_mnist; random crop (zero
    padding 4) and horizontal flip for cifar10; random-resized crop to 224
    and flip for imagenet2012 (resized then rounded to uint8).
  """
  info = dataset_info(name)
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch_size(batch_size, process_count)
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  builder = _get_builder(name, data_dir)
  split = tfds.split_for_jax_process(
      info.train_split,
      process_index=process_index,
      process_count=process_count,
      drop_remainder=True,
  )
  num_local = _num_examples(builder, split)
  steps_per_epoch = num_local // local_batch
  if steps_per_epoch == 0:
    raise ValueError(
        f"{name}/{info.train_split} has {num_local} examples on this process, "
        f"fewer than one batch of {local_batch}"
    )
  buffer = min(shuffle_buffer or _SHUFFLE_BUFFER[name], num_local)
  first_epoch, first_step = divmod(int(start_step), steps_per_epoch)
  read_kwargs = dict(
      split=split, decoders={"image": tfds.decode.SkipDecoding()}
  )

  def augment(position, image, label, augment_seed):
    seed = tf.stack([tf.constant(augment_seed, tf.int64), position])
    if name == "imagenet2012":
      image = _imagenet_train(image, seed)  # `image` is still JPEG bytes.
    elif name == "cifar10":
      image = _cifar_augment(image, seed)
    image = tf.ensure_shape(image, info.input_shape)
    return {"image": image, "label": tf.cast(label, tf.int32)}

  if name in _CACHE_DECODED and buffer == num_local:
    # Small dataset, shuffled as a whole: no tf.data in the training loop.
    return _in_memory_batches(
        builder,
        split,
        name,
        seed=seed,
        process_index=process_index,
        local_batch=local_batch,
        steps_per_epoch=steps_per_epoch,
        start_step=int(start_step),
    )

  # Large dataset (or a smaller shuffle buffer): stream, with a per-epoch
  # file order and shuffle buffer; JPEGs stay encoded until after the skip.
  def examples(file_seed):
    ds = builder.as_dataset(
        **read_kwargs,
        shuffle_files=True,
        read_config=tfds.ReadConfig(
            shuffle_seed=file_seed, try_autocache=False, options=_options()
        ),
    )
    if name == "imagenet2012":
      return ds.map(lambda ex: (ex["image"], ex["label"]))
    return ds.map(
        lambda ex: (_decode(builder, ex["image"]), ex["label"]),
        num_parallel_calls=_AUTOTUNE,
    )

  def epoch_dataset(epoch: int, skip_batches: int) -> tf.data.Dataset:
    file_seed, shuffle_seed, augment_seed = _epoch_seeds(
        seed, process_index, epoch
    )
    ds = examples(file_seed)
    ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(steps_per_epoch * local_batch).enumerate()
    ds = ds.skip(skip_batches * local_batch)  # Before any augmentation.
    ds = ds.map(
        lambda pos, ex: augment(pos, *ex, augment_seed=augment_seed),
        num_parallel_calls=_AUTOTUNE,
    )
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(_AUTOTUNE)
    return ds.with_options(_options())

  def batches():
    for epoch in itertools.count(first_epoch):
      skip = first_step if epoch == first_epoch else 0
      yield from epoch_dataset(epoch, skip).as_numpy_iterator()

  return batches()


# --------------------------------------------------------------------------
# Evaluation.


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
  builder = _get_builder(name, data_dir)
  _check_split_name(builder, split)
  size = _num_examples(builder, split)
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
  dicts."""
  first, stop, skip = indices[0], indices[-1] + 1, indices.step
  ds = builder.as_dataset(
      split=f"{split}[{first}:{stop}]",
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False, options=_options()),
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
    builder, name: str, split: str, indices: range
) -> tf.data.Dataset:
  """Examples with original index in `indices`, sorted by index (small
  datasets)."""
  id_key = _INDEX_FROM_ID[name]
  ds = builder.as_dataset(
      split=split,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False, options=_options()),
  )
  found = {}
  for ex in ds.as_numpy_iterator():
    index = _parse_index(name, ex[id_key])
    if index in indices:
      if index in found:
        raise ValueError(
            f"duplicate {name} id {ex[id_key]!r} in split {split!r}"
        )
      found[index] = (ex["image"], ex["label"])
  missing = [i for i in indices if i not in found]
  if missing:
    raise ValueError(
        f"{name}/{split}: no example with index {missing[:5]} (ids are "
        "expected to cover 0..n-1)"
    )
  return tf.data.Dataset.from_tensor_slices(
      {
          "image": np.array([found[i][0] for i in indices], dtype=object),
          "label": np.array([found[i][1] for i in indices], dtype=np.int64),
          "index": np.array(indices, dtype=np.int64),
      }
  )


def _imagenet_eval(encoded: tf.Tensor) -> tf.Tensor:
  """Resize the shorter side to 256 (rounded to uint8), centre-crop 224."""
  image = tf.io.decode_jpeg(encoded, channels=3)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  short = tf.minimum(height, width)
  # Like torchvision's Resize(256): the long side is truncated.
  new_h = height * _IMAGENET_EVAL_RESIZE // short
  new_w = width * _IMAGENET_EVAL_RESIZE // short
  image = _resize(image, tf.stack([new_h, new_w]))
  top = (new_h - 224) // 2
  left = (new_w - 224) // 2
  return image[top : top + 224, left : left + 224]


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
    ``mask=False``, ``index=-1``, ``label=0`` and a zero image. imagenet2012
    images are resized (shorter side 256, rounded to uint8) and centre-cropped
    to 224.

  Raises:
    ValueError: unknown dataset, bad arguments, or an empty subset.
  """
  info = dataset_info(name)
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch_size(batch_size, process_count)
  builder, split, indices = _subset(
      name, split, start, skip, max_examples, data_dir
  )
  per_process = -(-len(indices) // process_count)
  local = indices[
      process_index * per_process : (process_index + 1) * per_process
  ]
  num_batches = -(-per_process // local_batch)

  def preprocess(ex):
    if name == "imagenet2012":
      image = _imagenet_eval(ex["image"])
    else:
      image = _decode(builder, ex["image"])
    return {
        "image": tf.ensure_shape(image, info.input_shape),
        "label": tf.cast(ex["label"], tf.int32),
        "index": tf.cast(ex["index"], tf.int64),
        "mask": tf.constant(True),
    }

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
    if name in _INDEX_FROM_ID:
      examples = _examples_by_id(builder, name, split, local)
    else:
      examples = _examples_by_position(builder, split, local)
    ds = examples.map(preprocess, num_parallel_calls=_AUTOTUNE).concatenate(ds)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(_AUTOTUNE)
  return EvalBatches(
      ds.with_options(_options()),
      num_examples=len(indices),
      indices=local,
      num_batches=num_batches,
  )
