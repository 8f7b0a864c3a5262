"""Tests of dssn_jax.data.input_pipeline: TFDS pipelines that keep pixels on the
uint8 grid.

Fashion-MNIST is the real Debian data, prepared once per session into a
temporary data dir; cifar10 and imagenet2012 go through tfds.testing.mock_data.
"""

import dataclasses
import gzip
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dssn_jax.data import fashion_mnist
from dssn_jax.data import input_pipeline

DEBIAN_DIR = fashion_mnist.FASHION_MNIST_MANUAL_DIR
ONE_PROCESS = dict(process_index=0, process_count=1)


# --------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="session")
def fashion_dir(request, tmp_path_factory):
  """fashion_mnist prepared from the Debian files into a temporary data dir."""
  try:  # Share the suite-wide build (tests/conftest.py) when there is one.
    return request.getfixturevalue("fashion_mnist_data_dir")
  except pytest.FixtureLookupError:
    pass
  if not os.path.isdir(DEBIAN_DIR):
    pytest.skip("needs `apt-get install dataset-fashion-mnist`")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  fashion_mnist.prepare_fashion_mnist(data_dir)
  return data_dir


@pytest.fixture(scope="session")
def fashion_test_split(fashion_dir):
  """The TFDS fashion_mnist test split, in TFDS order, as numpy arrays."""
  builder = tfds.builder("fashion_mnist", data_dir=fashion_dir)
  ds = builder.as_dataset(split="test", batch_size=-1)
  ex = tfds.as_numpy(ds)
  return ex["image"], ex["label"]


def _read_debian(kind, split):
  fname = {
      ("images", "test"): "t10k-images-idx3-ubyte.gz",
      ("labels", "test"): "t10k-labels-idx1-ubyte.gz",
  }[(kind, split)]
  with gzip.open(os.path.join(DEBIAN_DIR, fname)) as f:
    raw = f.read()
  if kind == "images":
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)
  return np.frombuffer(raw, np.uint8, offset=8)


NUM_FAKE = 24


def _fake_cifar_image(index):
  """Channel 0 encodes the index; channels 1 and 2 are column and row ramps."""
  image = np.empty((32, 32, 3), np.uint8)
  image[..., 0] = 10 + index
  image[..., 1] = 1 + 7 * np.arange(32)[None, :]
  image[..., 2] = 1 + 7 * np.arange(32)[:, None]
  return image


def _fake_cifar_as_dataset(
    self, split, decoders=None, read_config=None, shuffle_files=False
):
  """Mocked cifar10 `_as_dataset`: NUM_FAKE examples stored in shuffled order,
  with ids `test_00000`.. like the real builder."""
  del self, split, read_config, shuffle_files
  order = np.random.RandomState(1).permutation(NUM_FAKE)
  pngs = [tf.io.encode_png(_fake_cifar_image(i)).numpy() for i in order]
  ds = tf.data.Dataset.from_tensor_slices(
      {
          "id": [f"test_{i:05d}" for i in order],
          "image": pngs,
          "label": (order % 10).astype(np.int64),
      }
  )
  if not (decoders and "image" in decoders):
    ds = ds.map(lambda ex: {**ex, "image": tf.io.decode_png(ex["image"], 3)})
  return ds


@pytest.fixture
def fake_cifar10():
  with tfds.testing.mock_data(as_dataset_fn=_fake_cifar_as_dataset):
    yield


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


# --------------------------------------------------------------------------
# Metadata and TF set-up.


def test_dataset_info():
  info = input_pipeline.dataset_info("cifar10")
  assert info.num_classes == 10
  assert info.input_shape == (32, 32, 3)
  assert len(info.mean) == len(info.std) == 3
  assert (info.train_split, info.eval_split, info.num_eval) == (
      "train",
      "test",
      10_000,
  )
  assert input_pipeline.dataset_info("fashion_mnist").input_shape == (28, 28, 1)
  imagenet = input_pipeline.dataset_info("imagenet2012")
  assert (imagenet.num_classes, imagenet.eval_split, imagenet.num_eval) == (
      1000,
      "validation",
      50_000,
  )
  with pytest.raises(dataclasses.FrozenInstanceError):
    info.num_classes = 3  # type: ignore[misc]


def test_unknown_dataset():
  for call in (
      lambda: input_pipeline.dataset_info("mnist"),
      lambda: input_pipeline.train_dataset(
          "mnist", batch_size=8, seed=0, **ONE_PROCESS
      ),
      lambda: input_pipeline.eval_dataset("mnist", batch_size=8, **ONE_PROCESS),
  ):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10"):
      call()


def test_hide_tf_from_accelerators():
  input_pipeline.hide_tf_from_accelerators()
  # Idempotent, also after TF initialized.
  input_pipeline.hide_tf_from_accelerators()
  assert tf.config.get_visible_devices("GPU") == []
  assert tf.config.get_visible_devices("TPU") == []


@pytest.mark.slow
def test_core_import_stays_free_of_tensorflow():
  code = (
      "import sys, dssn_jax; assert 'tensorflow' not in sys.modules, "
      "'TF imported'"
  )
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_dataset_table_and_converter_import_no_tensorflow():
  code = (
      "import sys; from dssn_jax.training import convert, datasets; "
      "assert 'tensorflow' not in sys.modules, 'TF imported'; "
      "assert datasets.dataset_info('cifar10').input_shape == (32, 32, 3)"
  )
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------
# Fashion-MNIST from the Debian files.


@pytest.mark.slow
def test_fashion_mnist_prepared_from_debian(fashion_dir, fashion_test_split):
  builder = tfds.builder("fashion_mnist", data_dir=fashion_dir)
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 60_000
  assert builder.info.splits["test"].num_examples == 10_000
  assert builder.info.features["image"].shape == (28, 28, 1)
  assert builder.info.features["image"].dtype == tf.uint8
  assert builder.info.features["label"].num_classes == 10
  images, labels = fashion_test_split
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)

  # Exactly the Debian examples (TFDS stores them in a shuffled order).
  def digests(imgs, lbls):
    return sorted(
        hashlib.sha1(i.tobytes() + bytes([l])).digest()
        for i, l in zip(imgs, lbls)
    )

  assert digests(images, labels) == digests(
      _read_debian("images", "test"), _read_debian("labels", "test")
  )


@pytest.mark.slow
def test_prepare_fashion_mnist_is_idempotent(fashion_dir):
  path = fashion_mnist.prepare_fashion_mnist(
      fashion_dir, manual_dir="/nonexistent"
  )
  assert path.startswith(fashion_dir) and os.path.isdir(path)


def test_prepare_fashion_mnist_missing_files(tmp_path):
  bogus = tmp_path / "no-such-dir"
  with pytest.raises(FileNotFoundError) as err:
    fashion_mnist.prepare_fashion_mnist(tmp_path / "tfds", manual_dir=bogus)
  assert "apt-get install dataset-fashion-mnist" in str(err.value)
  assert str(bogus) in str(err.value)


@pytest.mark.slow
def test_fashion_train_epoch(fashion_dir):
  it = input_pipeline.train_dataset(
      "fashion_mnist",
      batch_size=6000,
      seed=0,
      data_dir=fashion_dir,
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
def test_fashion_train_per_process(fashion_dir):
  assert (
      input_pipeline.train_steps_per_epoch(
          "fashion_mnist", batch_size=64, data_dir=fashion_dir, process_count=2
      )
      == 30_000 // 32
  )
  batches = [
      next(
          input_pipeline.train_dataset(
              "fashion_mnist",
              batch_size=64,
              seed=0,
              data_dir=fashion_dir,
              shuffle_buffer=64,  # Streaming path.
              process_index=p,
              process_count=2,
          )
      )
      for p in range(2)
  ]
  for batch in batches:
    assert batch["image"].shape == (32, 28, 28, 1)
  assert not np.array_equal(batches[0]["image"], batches[1]["image"])


@pytest.mark.slow
def test_fashion_eval_subset(fashion_dir, fashion_test_split):
  images, labels = fashion_test_split
  kwargs = dict(start=5, skip=7, max_examples=100, data_dir=fashion_dir)
  assert input_pipeline.num_examples_in_subset("fashion_mnist", **kwargs) == 100
  ev = input_pipeline.eval_dataset(
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
def test_fashion_eval_per_process(fashion_dir, fashion_test_split):
  _, labels = fashion_test_split
  seen = []
  for p in range(3):
    ev = input_pipeline.eval_dataset(
        "fashion_mnist",
        start=9990,
        batch_size=6,
        data_dir=fashion_dir,
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
def test_eval_errors(fashion_dir):
  common = dict(data_dir=fashion_dir, **ONE_PROCESS)
  with pytest.raises(ValueError, match="empty evaluation subset"):
    input_pipeline.eval_dataset(
        "fashion_mnist", start=10_000, batch_size=8, **common
    )
  with pytest.raises(ValueError, match="empty evaluation subset"):
    input_pipeline.eval_dataset(
        "fashion_mnist", max_examples=0, batch_size=8, **common
    )
  with pytest.raises(ValueError, match="empty evaluation subset"):
    input_pipeline.num_examples_in_subset(
        "fashion_mnist", start=20_000, data_dir=fashion_dir
    )
  with pytest.raises(ValueError, match="skip"):
    input_pipeline.eval_dataset("fashion_mnist", skip=0, batch_size=8, **common)
  with pytest.raises(ValueError, match="no split 'validation'"):
    input_pipeline.eval_dataset(
        "fashion_mnist", split="validation", batch_size=8, **common
    )
  with pytest.raises(ValueError, match="plain split name"):
    input_pipeline.eval_dataset(
        "fashion_mnist", split="test[:10]", batch_size=8, **common
    )
  with pytest.raises(ValueError, match="not divisible"):
    input_pipeline.eval_dataset(
        "fashion_mnist",
        batch_size=5,
        data_dir=fashion_dir,
        process_index=0,
        process_count=2,
    )


# --------------------------------------------------------------------------
# CIFAR-10 (mocked).


def _source_of(image):
  """Which fake example, crop offset and flip produced an augmented image."""
  index = int(image[..., 0].max()) - 10
  padded = np.pad(_fake_cifar_image(index), [(4, 4), (4, 4), (0, 0)])
  for dy in range(9):
    for dx in range(9):
      crop = padded[dy : dy + 32, dx : dx + 32]
      for flip in (False, True):
        if np.array_equal(image, crop[:, ::-1] if flip else crop):
          return index, (dy, dx), flip
  raise AssertionError("not a padded crop (+ flip) of a training image")


# None: the split in memory, augmented in numpy; 16: streamed through a
# shuffle buffer, augmented by TF ops.
@pytest.mark.parametrize("shuffle_buffer", [None, 16])
def test_cifar10_train_augmentation(fake_cifar10, shuffle_buffer):
  it = input_pipeline.train_dataset(
      "cifar10",
      batch_size=8,
      seed=0,
      shuffle_buffer=shuffle_buffer,
      **ONE_PROCESS,
  )
  epoch = _take(it, NUM_FAKE // 8)
  sources = []
  for batch in epoch:
    assert (
        batch["image"].shape == (8, 32, 32, 3)
        and batch["image"].dtype == np.uint8
    )
    assert batch["label"].dtype == np.int32
    for image, label in zip(batch["image"], batch["label"]):
      index, offset, flip = _source_of(image)  # Pixels moved, never changed.
      assert label == index % 10
      sources.append((index, offset, flip))
  assert sorted(s[0] for s in sources) == list(range(NUM_FAKE))  # One epoch.
  assert {s[2] for s in sources} == {False, True}
  assert len({s[1] for s in sources}) > 1


@pytest.mark.parametrize("shuffle_buffer", [None, 16])
def test_cifar10_train_deterministic_and_resumable(
    fake_cifar10, shuffle_buffer
):
  def run(seed, start_step=0, n=8):
    return _take(
        input_pipeline.train_dataset(
            "cifar10",
            batch_size=8,
            seed=seed,
            start_step=start_step,
            shuffle_buffer=shuffle_buffer,
            **ONE_PROCESS,
        ),
        n,
    )

  reference = run(seed=0)  # 3 steps per epoch: crosses two epoch boundaries.
  _assert_batches_equal(run(seed=0), reference)
  assert not np.array_equal(run(seed=1, n=1)[0]["image"], reference[0]["image"])
  for start_step in (1, 3, 4):  # Mid-epoch, at a boundary, past it.
    _assert_batches_equal(
        run(seed=0, start_step=start_step, n=8 - start_step),
        reference[start_step:],
    )
  # Epochs reshuffle and re-augment.
  assert not np.array_equal(reference[0]["image"], reference[3]["image"])


def test_cifar10_eval_index_from_id(fake_cifar10):
  assert (
      input_pipeline.num_examples_in_subset(
          "cifar10", start=3, skip=4, max_examples=5
      )
      == 5
  )
  ev = input_pipeline.eval_dataset(
      "cifar10", start=3, skip=4, max_examples=5, batch_size=4, **ONE_PROCESS
  )
  batches = list(ev)
  assert len(batches) == len(ev) == 2
  index = np.concatenate([b["index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(index, [3, 7, 11, 15, 19, -1, -1, -1])
  np.testing.assert_array_equal(mask, [True] * 5 + [False] * 3)
  for b in batches:
    assert b["image"].dtype == np.uint8 and b["image"].shape == (4, 32, 32, 3)
    for image, label, i, m in zip(
        b["image"], b["label"], b["index"], b["mask"]
    ):
      if m:  # The example whose id is `test_{i:05d}`, unaugmented.
        np.testing.assert_array_equal(image, _fake_cifar_image(i))
        assert label == i % 10
      else:
        assert not image.any() and label == 0

  # The whole split comes out in original order, although stored shuffled.
  ev = input_pipeline.eval_dataset(
      "cifar10", batch_size=NUM_FAKE, **ONE_PROCESS
  )
  np.testing.assert_array_equal(next(ev)["index"], np.arange(NUM_FAKE))


def test_cifar10_eval_per_process(fake_cifar10):
  per_process = []
  for p in range(2):
    ev = input_pipeline.eval_dataset(
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
  with tfds.testing.mock_data(num_examples=4):  # Random text ids.
    with pytest.raises(ValueError, match="unexpected cifar10 id"):
      input_pipeline.eval_dataset("cifar10", batch_size=4, **ONE_PROCESS)


# --------------------------------------------------------------------------
# ImageNet (mocked: random JPEGs of random sizes).


def test_imagenet_train_and_eval_shapes():
  with tfds.testing.mock_data(num_examples=6):
    it = input_pipeline.train_dataset(
        "imagenet2012", batch_size=4, seed=0, **ONE_PROCESS
    )
    batch = next(it)
    assert (
        batch["image"].shape == (4, 224, 224, 3)
        and batch["image"].dtype == np.uint8
    )
    assert batch["label"].dtype == np.int32
    assert ((batch["label"] >= 0) & (batch["label"] < 1000)).all()
    _assert_batches_equal(
        [
            next(
                input_pipeline.train_dataset(
                    "imagenet2012",
                    batch_size=4,
                    seed=0,
                    start_step=1,
                    **ONE_PROCESS,
                )
            )
        ],
        [next(it)],
    )

    ev = input_pipeline.eval_dataset(
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


def test_imagenet_resizes_round_to_the_grid():
  # A constant image stays exactly constant through resize + rounding.
  wide = tf.io.encode_jpeg(
      tf.fill([300, 500, 3], tf.constant(77, tf.uint8)), quality=100
  )
  image = input_pipeline._imagenet_eval(wide).numpy()  # pylint: disable=protected-access
  assert image.shape == (224, 224, 3) and image.dtype == np.uint8
  values = np.unique(image)
  assert len(values) == 1 and abs(int(values[0]) - 77) <= 1
  # Shorter side -> 256, centre crop: a 256x512 image crops columns 144..367.
  ramp = np.tile(
      np.repeat(np.arange(0, 256, 32, dtype=np.uint8), 64)[None, :, None],
      [256, 1, 3],
  )
  # pylint: disable-next=protected-access
  image = input_pipeline._imagenet_eval(
      tf.io.encode_jpeg(ramp, quality=100)
  ).numpy()
  np.testing.assert_allclose(
      image[0, :, 0].astype(int), ramp[0, 144:368, 0].astype(int), atol=8
  )
  # pylint: disable-next=protected-access
  crop = input_pipeline._imagenet_train(
      wide, tf.constant([1, 2], tf.int64)
  ).numpy()
  assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
  assert np.abs(crop.astype(int) - 77).max() <= 1
