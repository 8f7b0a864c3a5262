"""The data layer: datasets and the input pipelines that keep pixels on the
1/255 grid. The only layer that may import TensorFlow (as the input pipeline
only, through `quiet_tensorflow`); importing this package imports nothing.

Modules, one concern each:

* `datasets`: the table of per-dataset facts (shapes, classes, splits,
  normalization, and how the pipeline reads each dataset). No TensorFlow.
* `sharding`: which share of the data a process reads. No TensorFlow.
* `quiet_tensorflow`: TensorFlow and TFDS imported without their start-up
  lines, and kept off the accelerators.
* `fashion_mnist`: Fashion-MNIST built as TFDS offline from Debian's package.
* `builders`: TFDS builders: data_dir checks, preparation, deterministic reads.
* `transforms`: pixel transforms (augmentations, evaluation resize).
* `train_input`: infinite, resumable training batches.
* `eval_input`: padded evaluation batches of a subset by original index.

Usage::

    info = datasets.dataset_info("cifar10")  # DatasetInfo(num_classes, ...)
    it = train_input.train_dataset("cifar10", batch_size=64, seed=0)
    batch = next(it)  # {"image": uint8 (B,H,W,C), "label": int32 (B,)}
    ev = eval_input.eval_dataset("cifar10", start=0, skip=20, batch_size=100)
    len(ev), ev.num_examples  # batches on this process, subset size
    batch = next(ev)  # + "index": int64 (B,), "mask": bool (B,)
"""
