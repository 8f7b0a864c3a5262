"""Tests of dssn_jax.data.train_input: Grain training batches,
deterministic and resumable at any step (by start_step or by the iterator's
state).

Fashion-MNIST is the real Debian data (tests/conftest.py); cifar10 and
imagenet2012 go through tfds.testing.mock_data.
"""

import numpy as np
import pytest

from dssn_jax.data import sources
from dssn_jax.data import train_input
from dssn_jax.data import transforms

ONE_PROCESS = dict(process_index=0, process_count=1)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


# --------------------------------------------------------------------------
# Fashion-MNIST from the Debian files.


@pytest.mark.slow
def test_fashion_train_epoch(fashion_mnist_data_dir):
  it = train_input.train_dataset(
      "fashion_mnist",
      batch_size=6000,
      seed=0,
      data_dir=fashion_mnist_data_dir,
      **ONE_PROCESS,
  )
  epoch = _take(it, 10)
  for batch in epoch:
    assert batch.keys() == {"image", "label"}
    assert batch["image"].shape == (6000, 28, 28, 1)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
  labels = np.concatenate([b["label"] for b in epoch])
  np.testing.assert_array_equal(
      np.bincount(labels), [6000] * 10
  )  # A permutation.
  first_of_next_epoch = next(it)
  assert not np.array_equal(first_of_next_epoch["label"], epoch[0]["label"])


@pytest.mark.slow
def test_fashion_train_per_process(fashion_mnist_data_dir):
  assert (
      train_input.train_steps_per_epoch(
          "fashion_mnist",
          batch_size=64,
          data_dir=fashion_mnist_data_dir,
          process_count=2,
      )
      == 30_000 // 32
  )
  batches = [
      next(
          train_input.train_dataset(
              "fashion_mnist",
              batch_size=64,
              seed=0,
              data_dir=fashion_mnist_data_dir,
              process_index=p,
              process_count=2,
          )
      )
      for p in range(2)
  ]
  for batch in batches:
    assert batch["image"].shape == (32, 28, 28, 1)
  assert not np.array_equal(batches[0]["image"], batches[1]["image"])


# --------------------------------------------------------------------------
# CIFAR-10 (mocked: random images with real-looking ids, tests/conftest.py).


def _crop_sources():
  """{augmented image bytes: [(index, crop offset, flip)]} of every padded
  crop (+ flip) of every mocked training image."""
  stored = sources.open_split("cifar10", "train", None)
  pad = transforms.CROP_PADDING
  crops = {}
  for ex in stored:
    index = int(ex["id"].decode().split("_")[1])
    assert ex["label"] == index % 10
    image = transforms.decode(ex["image"], 3)
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    for dy in range(2 * pad + 1):
      for dx in range(2 * pad + 1):
        crop = padded[dy : dy + 32, dx : dx + 32]
        for flip in (False, True):
          key = (crop[:, ::-1] if flip else crop).tobytes()
          crops.setdefault(key, []).append((index, (dy, dx), flip))
  return crops


def test_cifar10_train_augmentation(mock_cifar10):
  del mock_cifar10
  num_train = 40  # The mock's examples per split.
  it = train_input.train_dataset(
      "cifar10",
      batch_size=8,
      seed=0,
      **ONE_PROCESS,
  )
  epoch = _take(it, num_train // 8)
  crop_sources = _crop_sources()
  drawn = []
  for batch in epoch:
    assert (
        batch["image"].shape == (8, 32, 32, 3)
        and batch["image"].dtype == np.uint8
    )
    assert batch["label"].dtype == np.int32
    for image, label in zip(batch["image"], batch["label"]):
      # Pixels moved, never changed: one padded crop (+ flip) of one image.
      (source,) = crop_sources[image.tobytes()]
      index, offset, flip = source
      assert label == index % 10
      drawn.append((index, offset, flip))
  assert sorted(s[0] for s in drawn) == list(range(num_train))  # One epoch.
  assert {s[2] for s in drawn} == {False, True}
  assert len({s[1] for s in drawn}) > 1


def test_cifar10_train_deterministic_and_resumable(mock_cifar10):
  del mock_cifar10

  def run(seed, start_step=0, n=12):
    return _take(
        train_input.train_dataset(
            "cifar10",
            batch_size=8,
            seed=seed,
            start_step=start_step,
            **ONE_PROCESS,
        ),
        n,
    )

  reference = run(seed=0)  # 5 steps per epoch: crosses two epoch boundaries.
  _assert_batches_equal(run(seed=0), reference)
  assert not np.array_equal(run(seed=1, n=1)[0]["image"], reference[0]["image"])
  for start_step in (1, 5, 7):  # Mid-epoch, at a boundary, past it.
    _assert_batches_equal(
        run(seed=0, start_step=start_step, n=12 - start_step),
        reference[start_step:],
    )
  # Epochs reshuffle and re-augment.
  assert not np.array_equal(reference[0]["image"], reference[5]["image"])
  # The iterator's state, taken mid-epoch and at a boundary, resumes a new
  # iterator exactly there (what a checkpoint saves).
  for taken in (3, 5):
    it = train_input.train_dataset(
        "cifar10", batch_size=8, seed=0, **ONE_PROCESS
    )
    _take(it, taken)
    state = it.get_state()
    resumed = train_input.train_dataset(
        "cifar10", batch_size=8, seed=0, **ONE_PROCESS
    )
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 12 - taken), reference[taken:])


# --------------------------------------------------------------------------
# ImageNet (mocked: random JPEGs of random sizes).


def _second_batch_in_process():
  """Batch 1 of the mock ImageNet stream, made in this process (no worker
  processes: the same batches)."""
  return next(
      train_input.train_dataset(
          "imagenet2012",
          batch_size=4,
          seed=0,
          start_step=1,
          workers=0,
          **ONE_PROCESS,
      )
  )


def test_imagenet_train_shapes_and_resume(mock_imagenet):
  del mock_imagenet
  # The dataset's default: batches made in a Grain worker process.
  it = train_input.train_dataset(
      "imagenet2012", batch_size=4, seed=0, workers=1, **ONE_PROCESS
  )
  batch = next(it)
  state = it.get_state()
  assert (
      batch["image"].shape == (4, 224, 224, 3)
      and batch["image"].dtype == np.uint8
  )
  assert batch["label"].dtype == np.int32
  assert ((batch["label"] >= 0) & (batch["label"] < 1000)).all()
  _assert_batches_equal(
      [_second_batch_in_process()],
      [next(it)],
  )
  resumed = train_input.train_dataset(
      "imagenet2012", batch_size=4, seed=0, workers=1, **ONE_PROCESS
  )
  resumed.set_state(state)
  _assert_batches_equal(
      [next(resumed)],
      [_second_batch_in_process()],
  )
