"""The data layer: datasets and the input pipelines that keep pixels on the
1/255 grid. The only layer that may import TensorFlow (to prepare a dataset
only, through `quiet_tensorflow`); reading prepared data imports none, and
importing this package imports nothing.

Modules, one concern each:

* `datasets`: the table of per-dataset facts (shapes, classes, splits,
  normalization, and how the pipeline reads each dataset). No TensorFlow.
* `sharding`: which share of the data a process reads. No TensorFlow.
* `quiet_tensorflow`: TensorFlow and TFDS imported without their start-up
  lines, and kept off the accelerators.
* `fashion_mnist`: Fashion-MNIST built as TFDS offline from Debian's package.
* `builders`: preparing datasets with TFDS, as ArrayRecord (TensorFlow).
* `sources`: data_dir checks; a prepared split read by index (no TensorFlow).
* `transforms`: decoding (PIL) and pixel transforms (augmentations,
  evaluation resize), in numpy.
* `train_input`: infinite training batches of Grain, checkpointable state.
* `eval_input`: padded evaluation batches of a subset by original index.

Usage::

    info = datasets.dataset_info("cifar10")  # DatasetInfo(num_classes, ...)
    it = train_input.train_dataset("cifar10", batch_size=64, seed=0)
    batch = next(it)  # {"image": uint8 (B,H,W,C), "label": int32 (B,)}
    state = it.get_state()  # JSON-able; it.set_state(state) resumes there
    ev = eval_input.eval_dataset("cifar10", start=0, skip=20, batch_size=100)
    len(ev), ev.num_examples  # batches on this process, subset size
    batch = next(ev)  # + "index": int64 (B,), "mask": bool (B,)
"""
