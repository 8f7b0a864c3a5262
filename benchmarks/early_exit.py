r"""Early-exit DSSN and sequential uniform against full runs.

The figures of docs/early_exit.md.

Trains a small CNN briefly per sigma on Fashion-MNIST (DSSN noise; uniform
noise for the sequential check), then certifies the first test images at
the study's radii both ways and prints a markdown table: forward passes and
seconds per image, and whether the answers agree (they must, for DSSN).

  python -m benchmarks.early_exit --data_dir=/tmp/tfds --images=20 \
      --train_steps=150 --seq_n_max=10000 --seq_images=10

With --random_model=wrn_40_2, the DSSN rows are the benchmark's WRN-40-2
(CIFAR-10 shapes) with random weights on random grid images, no training.
"""

from __future__ import annotations

import functools
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import measure
from configs import fashion_mnist as fashion_mnist_config
from dssn_jax.core import dssn
from dssn_jax.core import dssn_decide
from dssn_jax.core import randomized
from dssn_jax.core import randomized_decide
from dssn_jax.core import smoothing
from dssn_jax.data import eval_input
from dssn_jax.data import fashion_mnist
from dssn_jax.training import checkpoints
from dssn_jax.training import classifier as classifier_training

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (built here)")
_IMAGES = flags.DEFINE_integer("images", 20, "test images per sigma (DSSN)")
_STEPS = flags.DEFINE_integer("train_steps", 150, "training steps per sigma")
_SIGMAS = flags.DEFINE_list("sigmas", ["0.25", "0.5", "1", "2"], "sigmas")
_SEQ_N_MAX = flags.DEFINE_integer("seq_n_max", 10_000, "N_max = fixed N")
_SEQ_IMAGES = flags.DEFINE_integer("seq_images", 10, "images (uniform)")
_SEQ_SIGMA = flags.DEFINE_float("seq_sigma", 0.5, "sigma of the uniform run")
_RADII = flags.DEFINE_list("radii", None, "requested radii (default: study's)")
_RANDOM_MODEL = flags.DEFINE_string(
    "random_model",
    None,
    "A benchmark model (e.g. wrn_40_2) with random weights on random grid "
    "images instead of trained small CNNs: DSSN pass counts only (the "
    "certified fractions ignore labels).",
)


def _train(data_dir, sigma, noise, steps):
  config = fashion_mnist_config.get_config("smoke")
  config.update(
      data_dir=data_dir,
      sigma=sigma,
      noise=noise,
      num_epochs=1,
      steps_per_epoch=steps,
      batch_size=64,
      log_every_steps=steps,
      eval_max_examples=64,
  )
  workdir = tempfile.mkdtemp(prefix=f"early_exit_{noise}_{sigma}_")
  classifier_training.train_and_evaluate(config, workdir)
  return config, checkpoints.load_classifier(workdir)


def _images(data_dir, count):
  batch = next(
      eval_input.eval_dataset(
          "fashion_mnist",
          max_examples=count,
          batch_size=count,
          data_dir=data_dir,
      )
  )
  x = (np.asarray(batch["image"], np.float32) / 255).astype(np.float32)
  return x, np.asarray(batch["label"]), np.asarray(batch["index"])


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(jax.tree.leaves(out))
  return out, time.perf_counter() - start


def _dssn_row(sigma, apply_fn, params, spec, v, x, labels, radii) -> str:
  """One table row: full against early-exit DSSN on the images x (labels
  None: the fraction certified, whatever the label)."""
  run_full = functools.partial(
      dssn.dssn_counts, apply_fn, x, v, spec, params=params
  )
  run_early = functools.partial(
      dssn_decide.dssn_decide, apply_fn, x, v, spec, radii, params=params
  )
  run_full(), run_early()  # Compile both first.
  counts, t_full = _timed(run_full)
  early, t_early = _timed(run_early)
  pred, _, radius = dssn.certify_from_counts(np.asarray(counts), spec)
  same = np.array_equal(early.pred, pred) and np.array_equal(
      early.certified, radius[:, None] >= np.asarray(radii)[None]
  )
  correct = np.ones_like(pred, bool) if labels is None else pred == labels
  acc = ((radius[:, None] >= np.asarray(radii)[None]) & correct[:, None]).mean(
      0
  )
  return (
      f"| {sigma:g} | {spec.levels} | {early.splits.mean():.0f} | "
      f"{early.evaluated.mean():.0f} | "
      f"{spec.levels / early.evaluated.mean():.2f}x | "
      f"{t_full / len(x):.3f} | {t_early / len(x):.3f} | "
      f"{'yes' if same else 'NO'} | "
      + ", ".join(f"{100 * a:.0f}" for a in acc)
      + " |"
  )


def _dssn_rows(data_dir, radii):
  rows = []
  for sigma in map(float, _SIGMAS.value):
    _, clf = _train(data_dir, sigma, "dssn", _STEPS.value)
    x, labels, _ = _images(data_dir, _IMAGES.value)
    rows.append(
        _dssn_row(
            sigma,
            clf.apply_fn,
            clf.variables,
            clf.spec,
            clf.offsets,
            x,
            labels,
            radii,
        )
    )
  return rows


def _random_model_rows(name, radii):
  """DSSN rows of a benchmark model with random weights on grid images."""
  subject = measure.make_subject(name)
  x = measure.grid_images(subject.input_shape, _IMAGES.value, seed=1)
  rows = []
  for sigma in map(float, _SIGMAS.value):
    spec = smoothing.SmoothingSpec(sigma, 255)
    v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
    rows.append(
        _dssn_row(
            sigma,
            subject.apply_fn,
            subject.variables,
            spec,
            v,
            x,
            None,
            radii,
        )
    )
  return rows


def _uniform_rows(data_dir, radii):
  sigma, n_max = _SEQ_SIGMA.value, _SEQ_N_MAX.value
  _, clf = _train(data_dir, sigma, "uniform", _STEPS.value)
  x, labels, index = _images(data_dir, _SEQ_IMAGES.value)
  spec, params, key = clf.spec, clf.variables, jax.random.key(0)
  run_fixed = lambda: randomized.certify_randomized(
      clf.apply_fn,
      x,
      spec,
      key,
      noise="uniform",
      n=n_max,
      params=params,
      row_ids=index,
  )
  run_seq = lambda: randomized_decide.sequential_certify(
      clf.apply_fn,
      x,
      spec,
      key,
      radii,
      noise="uniform",
      n_max=n_max,
      params=params,
      row_ids=index,
  )
  fixed, t_fixed = _timed(run_fixed)
  seq, t_seq = _timed(run_seq)
  fixed_acc = (
      (fixed.radius[:, None] >= np.asarray(radii)[None])
      & (fixed.pred == labels)[:, None]
  ).mean(0)
  seq_acc = (seq.certified & (seq.pred == labels)[:, None]).mean(0)
  return [
      f"| fixed N | {n_max} | {t_fixed / len(x):.2f} | "
      + ", ".join(f"{100 * a:.0f}" for a in fixed_acc)
      + " |",
      f"| sequential | {seq.samples.mean():.0f} (evaluated "
      f"{seq.evaluated.mean():.0f}) | {t_seq / len(x):.2f} | "
      + ", ".join(f"{100 * a:.0f}" for a in seq_acc)
      + " |",
  ]


def main(argv):
  del argv
  data_dir = _DATA_DIR.value or tempfile.mkdtemp(prefix="tfds_")
  if not _RANDOM_MODEL.value or _SEQ_IMAGES.value > 0:
    fashion_mnist.prepare_fashion_mnist(data_dir)
  radii = _RADII.value or fashion_mnist_config.get_config("study").certify.radii
  radii = np.unique(np.r_[0.0, np.asarray(radii, np.float64)])
  print(f"radii {radii.tolist()}; {jax.devices()[0].platform}")
  print(
      "| σ | L | splits used | splits evaluated | saved | s/img full |"
      " s/img early | same answers | certified acc. (%) at radii |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  if _RANDOM_MODEL.value:
    dssn_rows = _random_model_rows(_RANDOM_MODEL.value, radii)
  else:
    dssn_rows = _dssn_rows(data_dir, radii)
  for row in dssn_rows:
    print(row, flush=True)
  if _SEQ_IMAGES.value > 0:
    print("\n| uniform | counting draws/img | s/img | certified acc. (%) |")
    print("|---|---|---|---|")
    for row in _uniform_rows(data_dir, radii):
      print(row, flush=True)


if __name__ == "__main__":
  app.run(main)
