"""Tests of dssn_jax.data.datasets: the one table of per-dataset facts, and
that the pipelines read it instead of branching on dataset names."""

import ast
import dataclasses
import pathlib
import subprocess
import sys

import pytest

from dssn_jax.data import builders
from dssn_jax.data import datasets
from dssn_jax.data import eval_input
from dssn_jax.data import train_input
from dssn_jax.data import transforms

ONE_PROCESS = dict(process_index=0, process_count=1)
DATA_PACKAGE = pathlib.Path(datasets.__file__).parent


def test_dataset_info():
  info = datasets.dataset_info("cifar10")
  assert info.num_classes == 10
  assert info.input_shape == (32, 32, 3)
  assert len(info.mean) == len(info.std) == 3
  assert (info.train_split, info.eval_split, info.num_eval) == (
      "train",
      "test",
      10_000,
  )
  assert datasets.dataset_info("fashion_mnist").input_shape == (28, 28, 1)
  imagenet = datasets.dataset_info("imagenet2012")
  assert (imagenet.num_classes, imagenet.eval_split, imagenet.num_eval) == (
      1000,
      "validation",
      50_000,
  )
  with pytest.raises(dataclasses.FrozenInstanceError):
    info.num_classes = 3  # type: ignore[misc]


def test_pipeline_facts():
  fashion, cifar, imagenet = map(
      datasets.dataset_info, ("fashion_mnist", "cifar10", "imagenet2012")
  )
  # The small datasets decode in the training process, ImageNet's JPEGs in
  # worker processes (one per core but one).
  assert (
      fashion.decode_workers,
      cifar.decode_workers,
      imagenet.decode_workers,
  ) == (0, 0, -1)
  assert (
      fashion.train_augmentation,
      cifar.train_augmentation,
      imagenet.train_augmentation,
  ) == ("none", "crop_flip", "random_resized_crop")
  assert (fashion.eval_resize, cifar.eval_resize, imagenet.eval_resize) == (
      None,
      None,
      256,
  )
  # Only CIFAR-10's index comes from its `id` ("test_00042").
  assert (fashion.index_feature, cifar.index_feature) == (None, "id")
  assert imagenet.index_feature is None
  assert (fashion.preparation, cifar.preparation, imagenet.preparation) == (
      "debian_package",
      "download",
      "manual_tars",
  )


def test_table_is_consistent():
  assert set(datasets.MODEL_DATASETS.values()) <= set(datasets.KNOWN_DATASETS)
  # Every kind the table may name is implemented, and no other.
  assert set(builders._PREPARE) == set(datasets.PREPARATIONS)  # pylint: disable=protected-access
  assert set(transforms.BATCH_AUGMENTATIONS) == set(
      datasets.BATCH_AUGMENTATIONS
  )
  assert set(transforms.JPEG_AUGMENTATIONS) == set(datasets.JPEG_AUGMENTATIONS)
  for name in datasets.KNOWN_DATASETS:
    info = datasets.dataset_info(name)
    assert info.name == name
    assert info.preparation in datasets.PREPARATIONS
    assert len(info.mean) == len(info.std) == info.input_shape[-1]
    assert info.decode_workers >= -1
    assert info.train_augmentation in (
        datasets.BATCH_AUGMENTATIONS + datasets.JPEG_AUGMENTATIONS
    )
    if info.eval_resize is not None:
      assert info.eval_resize >= max(info.input_shape[:2])


def test_no_branches_on_dataset_names():
  """Per-dataset behaviour comes from the table: no data module other than
  the table (and Fashion-MNIST's own builder) names a dataset in its code."""
  for path in sorted(DATA_PACKAGE.glob("*.py")):
    if path.name in ("datasets.py", "fashion_mnist.py"):
      continue
    tree = ast.parse(path.read_text())
    names = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and node.value in datasets.KNOWN_DATASETS
    ]
    assert not names, f"{path.name} names datasets {names}"


def test_unknown_dataset():
  for call in (
      lambda: datasets.dataset_info("mnist"),
      lambda: train_input.train_dataset(
          "mnist", batch_size=8, seed=0, **ONE_PROCESS
      ),
      lambda: eval_input.eval_dataset("mnist", batch_size=8, **ONE_PROCESS),
  ):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10"):
      call()


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
      "import sys; from dssn_jax.data import datasets, sharding; "
      "from dssn_jax.training import convert; "
      "assert 'tensorflow' not in sys.modules, 'TF imported'; "
      "assert datasets.dataset_info('cifar10').input_shape == (32, 32, 3)"
  )
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
