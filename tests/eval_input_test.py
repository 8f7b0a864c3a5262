"""Tests of dssn_jax.data.eval_input: padded evaluation batches of a subset,
by original index, split over processes.

Fashion-MNIST is the real Debian data (tests/conftest.py); cifar10 and
imagenet2012 go through tfds.testing.mock_data.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dssn_jax.data import eval_input
from dssn_jax.data import sources
from dssn_jax.data import transforms
from tests.conftest import MockRecords

ONE_PROCESS = dict(process_index=0, process_count=1)


@pytest.fixture(scope="session")
def fashion_test_split(fashion_mnist_data_dir):
  """The TFDS fashion_mnist test split, in TFDS order, as numpy arrays."""
  source = sources.open_split("fashion_mnist", "test", fashion_mnist_data_dir)
  records = source.__getitems__(list(range(len(source))))
  images = np.stack([transforms.decode(r["image"], 1) for r in records])
  return images, np.array([r["label"] for r in records])


# --------------------------------------------------------------------------
# Fashion-MNIST from the Debian files: the index is the TFDS position.


@pytest.mark.slow
def test_fashion_eval_subset(fashion_mnist_data_dir, fashion_test_split):
  images, labels = fashion_test_split
  kwargs = dict(
      start=5, skip=7, max_examples=100, data_dir=fashion_mnist_data_dir
  )
  assert eval_input.num_examples_in_subset("fashion_mnist", **kwargs) == 100
  ev = eval_input.eval_dataset(
      "fashion_mnist", batch_size=32, **kwargs, **ONE_PROCESS
  )
  assert (len(ev), ev.num_examples, ev.num_local_examples) == (4, 100, 100)
  batches = list(ev)
  assert len(batches) == 4
  batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (
      128,
      28,
      28,
      1,
  )
  assert batch["label"].dtype == np.int32
  assert batch["index"].dtype == np.int64
  assert batch["mask"].dtype == bool
  want = np.arange(5, 5 + 7 * 100, 7)
  np.testing.assert_array_equal(batch["mask"], np.arange(128) < 100)
  np.testing.assert_array_equal(batch["index"][:100], want)
  np.testing.assert_array_equal(batch["index"][100:], -1)
  # The index is the position in the TFDS split.
  np.testing.assert_array_equal(batch["image"][:100], images[want])
  np.testing.assert_array_equal(batch["label"][:100], labels[want])
  assert not batch["image"][100:].any() and not batch["label"][100:].any()


@pytest.mark.slow
def test_fashion_eval_per_process(fashion_mnist_data_dir, fashion_test_split):
  _, labels = fashion_test_split
  seen = []
  for p in range(3):
    ev = eval_input.eval_dataset(
        "fashion_mnist",
        start=9990,
        batch_size=6,
        data_dir=fashion_mnist_data_dir,
        process_index=p,
        process_count=3,
    )
    assert len(ev) == 2 and ev.num_examples == 10
    batches = list(ev)
    assert len(batches) == 2
    for b in batches:
      assert b["image"].shape == (2, 28, 28, 1)
      np.testing.assert_array_equal(
          b["label"][b["mask"]], labels[b["index"][b["mask"]]]
      )
      seen.extend(b["index"][b["mask"]].tolist())
  assert seen == list(range(9990, 10_000))  # Disjoint, in order, each once.


@pytest.mark.slow
def test_eval_errors(fashion_mnist_data_dir):
  common = dict(data_dir=fashion_mnist_data_dir, **ONE_PROCESS)
  with pytest.raises(ValueError, match="empty evaluation subset"):
    eval_input.eval_dataset(
        "fashion_mnist", start=10_000, batch_size=8, **common
    )
  with pytest.raises(ValueError, match="empty evaluation subset"):
    eval_input.eval_dataset(
        "fashion_mnist", max_examples=0, batch_size=8, **common
    )
  with pytest.raises(ValueError, match="empty evaluation subset"):
    eval_input.num_examples_in_subset(
        "fashion_mnist", start=20_000, data_dir=fashion_mnist_data_dir
    )
  with pytest.raises(ValueError, match="skip"):
    eval_input.eval_dataset("fashion_mnist", skip=0, batch_size=8, **common)
  with pytest.raises(ValueError, match="no split 'validation'"):
    eval_input.eval_dataset(
        "fashion_mnist", split="validation", batch_size=8, **common
    )
  with pytest.raises(ValueError, match="plain split name"):
    eval_input.eval_dataset(
        "fashion_mnist", split="test[:10]", batch_size=8, **common
    )
  with pytest.raises(ValueError, match="not divisible"):
    eval_input.eval_dataset(
        "fashion_mnist",
        batch_size=5,
        data_dir=fashion_mnist_data_dir,
        process_index=0,
        process_count=2,
    )


# --------------------------------------------------------------------------
# CIFAR-10 (mocked, tests/conftest.py): the index comes from the `id`.


def _stored_by_id(split):
  """{index of the id '<split>_<index>': (image, label)} of the mocked
  split, read as stored (shuffled)."""
  stored = sources.open_split("cifar10", split, None)
  return {
      int(ex["id"].decode().split("_")[1]): (
          transforms.decode(ex["image"], 3),
          ex["label"],
      )
      for ex in stored
  }


def test_cifar10_eval_index_from_id(mock_cifar10):
  del mock_cifar10
  assert (
      eval_input.num_examples_in_subset(
          "cifar10", start=3, skip=4, max_examples=5
      )
      == 5
  )
  ev = eval_input.eval_dataset(
      "cifar10", start=3, skip=4, max_examples=5, batch_size=4, **ONE_PROCESS
  )
  batches = list(ev)
  assert len(batches) == len(ev) == 2
  index = np.concatenate([b["index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(index, [3, 7, 11, 15, 19, -1, -1, -1])
  np.testing.assert_array_equal(mask, [True] * 5 + [False] * 3)
  stored = _stored_by_id("test")
  for b in batches:
    assert b["image"].dtype == np.uint8 and b["image"].shape == (4, 32, 32, 3)
    for image, label, i, m in zip(
        b["image"], b["label"], b["index"], b["mask"]
    ):
      if m:  # The example whose id is `test_{i:05d}`, unaugmented.
        np.testing.assert_array_equal(image, stored[i][0])
        assert label == stored[i][1] == i % 10
      else:
        assert not image.any() and label == 0

  # The whole split comes out in original order, although stored shuffled.
  num_test = len(stored)
  assert list(stored) != sorted(stored)  # Stored shuffled indeed.
  ev = eval_input.eval_dataset("cifar10", batch_size=num_test, **ONE_PROCESS)
  np.testing.assert_array_equal(next(ev)["index"], np.arange(num_test))


def test_cifar10_eval_per_process(mock_cifar10):
  del mock_cifar10
  per_process = []
  for p in range(2):
    ev = eval_input.eval_dataset(
        "cifar10",
        start=3,
        skip=4,
        max_examples=5,
        batch_size=4,
        process_index=p,
        process_count=2,
    )
    batches = list(ev)
    assert len(batches) == len(ev) == 2  # The same on every process.
    per_process.append(
        [i for b in batches for i, m in zip(b["index"], b["mask"]) if m]
    )
  assert per_process == [[3, 7, 11], [15, 19]]


def test_cifar10_malformed_ids():
  def random_text_ids(self, split, **kwargs):
    del self, split, kwargs
    return MockRecords(
        {"id": b"x7Qz", "image": b"", "label": np.int64(0)} for _ in range(4)
    )

  with tfds.testing.mock_data(
      num_examples=4, as_data_source_fn=random_text_ids
  ):
    with pytest.raises(ValueError, match="unexpected cifar10 id"):
      eval_input.eval_dataset("cifar10", batch_size=4, **ONE_PROCESS)


# --------------------------------------------------------------------------
# ImageNet (mocked: random JPEGs of random sizes): resized, centre-cropped.


def test_imagenet_eval_shapes():
  with tfds.testing.mock_data(num_examples=6):
    ev = eval_input.eval_dataset(
        "imagenet2012", skip=2, batch_size=2, **ONE_PROCESS
    )
    batches = list(ev)
    assert len(batches) == len(ev) == 2
    for b in batches:
      assert (
          b["image"].shape == (2, 224, 224, 3) and b["image"].dtype == np.uint8
      )
    np.testing.assert_array_equal(
        np.concatenate([b["index"] for b in batches]), [0, 2, 4, -1]
    )
