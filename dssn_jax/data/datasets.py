"""The datasets dssn-jax knows: one table of every per-dataset fact.

Shapes, classes, splits and normalization (what models and converters
need), and how the input pipeline reads each dataset: how it is prepared,
its training augmentation, whether its training images are decoded in
worker processes, its evaluation resize and where an example's original
index comes from. The pipeline modules read these fields instead
of branching on dataset names, so adding a dataset is adding a row here.

This module imports no TensorFlow, so that code which needs a dataset's facts
but not its images (the converter, the benchmarks, model construction) stays
free of it.
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

# How a dataset that is not prepared in the data dir gets built
# (`builders.get_builder`).
PREPARATIONS = (
    "download",  # TFDS downloads and prepares it.
    "debian_package",  # From Debian's dataset-fashion-mnist (fashion_mnist.py).
    "manual_tars",  # From the ILSVRC tars in TFDS's manual dir.
)

# Training augmentations (`transforms`, numpy and PIL). "none" and
# "crop_flip" act on decoded uint8 batches; "random_resized_crop" acts on
# each encoded JPEG (it resizes only the crop window).
BATCH_AUGMENTATIONS = ("none", "crop_flip")
JPEG_AUGMENTATIONS = ("random_resized_crop",)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset, as the models, CLIs and pipelines need them.

  Attributes:
    name: TFDS name.
    num_classes: number of labels.
    input_shape: (H, W, C) of one pipeline output image.
    mean, std: per-channel statistics in [0, 1] units, for the model's
      internal normalization (applied after the noise).
    train_split, eval_split: TFDS split names.
    num_eval: number of examples in ``eval_split``.
    preparation: one of :data:`PREPARATIONS`.
    decode_workers: training batches are read and decoded in this many Grain
      worker processes per training process (-1: one per CPU core but one);
      0: in threads of the training process (cheap PNG decoding).
    train_augmentation: one of :data:`BATCH_AUGMENTATIONS` (applied to each
      decoded batch) or :data:`JPEG_AUGMENTATIONS` (applied to each encoded
      image).
    eval_resize: evaluation images are resized so that their shorter side
      is this many pixels (then rounded to uint8) and centre-cropped to
      ``input_shape``; None: stored at ``input_shape``, only decoded.
    index_feature: string feature holding the original index of an example
      as ``"<split>_<index>"`` (e.g. ``"test_00042"``); None: the index is
      the position in the TFDS split.
  """

  name: str
  num_classes: int
  input_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_split: str
  eval_split: str
  num_eval: int
  preparation: str
  decode_workers: int
  train_augmentation: str
  eval_resize: int | None = None
  index_feature: str | None = None


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
        preparation="debian_package",
        decode_workers=0,
        train_augmentation="none",
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
        preparation="download",
        decode_workers=0,
        train_augmentation="crop_flip",
        # The order of the CIFAR-10 binary batches (torchvision's CIFAR10,
        # which the reference PyTorch code iterates); TFDS stores the
        # examples shuffled.
        index_feature="id",
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
        preparation="manual_tars",
        decode_workers=-1,  # JPEG decoding and resizing: ~5 ms an image.
        train_augmentation="random_resized_crop",
        eval_resize=256,
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
