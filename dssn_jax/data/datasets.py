"""The datasets dssn-jax knows: shapes, classes, splits, normalization.

A table without TensorFlow, so that code which needs a dataset's facts but
not its images (the converter, the benchmarks, model construction) imports
no input pipeline. `input_pipeline` reads the images.
"""

from __future__ import annotations

import dataclasses

# The dataset whose input shape, classes and normalization each model of
# `models.create_model` is built for.
MODEL_DATASETS = {
    "small_cnn": "fashion_mnist",
    "wrn_40_2": "cifar10",
    "resnet110": "cifar10",
    "resnet110_zero_pad": "cifar10",
    "resnet50": "imagenet2012",
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset, as the models and CLIs need them.

  Attributes:
    name: TFDS name.
    num_classes: number of labels.
    input_shape: (H, W, C) of one pipeline output image.
    mean, std: per-channel statistics in [0, 1] units, for the model's
      internal normalization (applied after the noise).
    train_split, eval_split: TFDS split names.
    num_eval: number of examples in ``eval_split``.
  """

  name: str
  num_classes: int
  input_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_split: str
  eval_split: str
  num_eval: int


_DATASETS = {
    # Statistics of the 60,000 Debian training images.
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        input_shape=(28, 28, 1),
        mean=(0.2860,),
        std=(0.3530,),
        train_split="train",
        eval_split="test",
        num_eval=10_000,
    ),
    # The constants of Cohen et al. 2019, which the authors' code reuses.
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        input_shape=(32, 32, 3),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        train_split="train",
        eval_split="test",
        num_eval=10_000,
    ),
    "imagenet2012": DatasetInfo(
        name="imagenet2012",
        num_classes=1000,
        input_shape=(224, 224, 3),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        train_split="train",
        eval_split="validation",
        num_eval=50_000,
    ),
}

KNOWN_DATASETS = tuple(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
  """Returns the :class:`DatasetInfo` of a supported dataset."""
  try:
    return _DATASETS[name]
  except KeyError:
    raise ValueError(
        f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}"
    ) from None
