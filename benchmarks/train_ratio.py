r"""Training throughput end to end against the jitted train step alone.

  python -m benchmarks.train_ratio --outdir=runs/train_ratio

`train_and_evaluate` images per second over whole steady epochs (input
pipeline, logging, evaluation of the test split clean and under noise,
checkpoint) divided by the images per second of the jitted train step alone
at the same batch size, on a batch already on the device. One run of
`--epochs` + 1 epochs in a fresh workdir; a steady epoch is the wall-clock
interval between the metrics lines of two consecutive epoch ends
(`wall_time`), which holds one epoch of stepping, its evaluation and the
previous epoch's checkpoint save, and leaves start-up and compilation out.
It is split, from the run's own epoch metrics, into stepping (input
pipeline, dispatch and logging included: `stepping_ratio` is its images/s
over the step alone), evaluation, and the rest (checkpoint, epoch
boundaries). The step alone is timed in rounds before and after the run
(the median of all), so that a drift of the machine's speed during the run
hits both sides alike as far as it can. Config: the Fashion-MNIST
quickstart (small CNN, batch 128) unless --config says otherwise.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/fashion_mnist.py:quickstart", "Training config."
)
_OUTDIR = flags.DEFINE_string("outdir", "runs/train_ratio", "Output dir.")
_EPOCHS = flags.DEFINE_integer("epochs", 1, "Steady epochs timed.")
_STEP_ROUNDS = flags.DEFINE_integer("step_rounds", 3, "Train-step rounds.")
_STEPS = flags.DEFINE_integer("steps", 50, "Train steps per round.")


def train_step_images_per_second(config, rounds: int, steps: int):
  """Images/s of the jitted train step alone (median over rounds)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from dssn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from dssn_jax.training import classifier  # pylint: disable=g-import-not-at-top

  info = datasets.dataset_info(config.dataset)
  trainer = classifier.trainer(config)
  state = trainer.init_state(1000)
  rng = np.random.RandomState(0)
  batch = jax.device_put(
      {
          "image": (
              rng.randint(
                  0, 256, (config.batch_size,) + tuple(info.input_shape)
              ).astype(np.uint8)
          ),
          "label": (
              rng.randint(0, info.num_classes, config.batch_size).astype(
                  np.int32
              )
          ),
      }
  )
  step = jax.jit(trainer.train_step, donate_argnums=0)
  key = jax.random.key(1)
  state, _ = jax.block_until_ready(step(state, batch, key))  # Compiles.
  rates = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    rates.append(steps * config.batch_size / (time.perf_counter() - start))
  return statistics.median(rates), rates


def _epoch_metrics(config, epochs: int) -> list[dict]:
  """The epoch-end metrics lines of a train_and_evaluate run of `epochs`
  epochs in a new workdir."""
  from dssn_jax.training import classifier  # pylint: disable=g-import-not-at-top
  from dssn_jax.training import metrics  # pylint: disable=g-import-not-at-top

  config = config.copy_and_resolve_references()
  config.num_epochs = epochs
  with tempfile.TemporaryDirectory() as workdir:
    classifier.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, metrics.METRICS_FILE)) as f:
      lines = [json.loads(line) for line in f]
  return [m for m in lines if "epoch" in m]


def _loadavg() -> str:
  with open("/proc/loadavg") as f:
    return " ".join(f.read().split()[:3])


def main(argv):
  del argv
  from dssn_jax.data import train_input  # pylint: disable=g-import-not-at-top
  from dssn_jax.runtime import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.reexec_with_huge_pages()  # As the training entry points do.
  config = _CONFIG.value
  steps_per_epoch = (
      config.steps_per_epoch
      if config.steps_per_epoch > 0
      else train_input.train_steps_per_epoch(
          config.dataset, batch_size=config.batch_size, data_dir=config.data_dir
      )
  )
  before, before_rates = train_step_images_per_second(
      config, _STEP_ROUNDS.value, _STEPS.value
  )
  epochs = _epoch_metrics(config, 1 + _EPOCHS.value)
  load_mid = _loadavg()
  _, after_rates = train_step_images_per_second(
      config, _STEP_ROUNDS.value, _STEPS.value
  )
  step_rate = statistics.median(before_rates + after_rates)
  # Steady epochs: from one epoch-end line to the next.
  steady = epochs[1:]
  seconds = epochs[-1]["wall_time"] - epochs[0]["wall_time"]
  images = len(steady) * steps_per_epoch * config.batch_size
  end_to_end = images / seconds
  stepping = sum(m["train_seconds"] for m in steady)
  evaluation = sum(m["eval_seconds"] for m in steady)
  report = {
      "config": (
          f"{config.dataset} {config.model} batch " f"{config.batch_size}"
      ),
      "steady_epochs": len(steady),
      "steps_per_epoch": steps_per_epoch,
      "train_and_evaluate_images_per_s": end_to_end,
      "train_step_images_per_s": step_rate,
      "train_step_rates_before": before_rates,
      "train_step_rates_after": after_rates,
      "ratio": end_to_end / step_rate,
      "stepping_images_per_s": images / stepping,
      "stepping_ratio": images / stepping / step_rate,
      "steady_seconds": seconds,
      "stepping_seconds": stepping,
      "eval_seconds": evaluation,
      "other_seconds": seconds - stepping - evaluation,
      "load_mid": load_mid,
      "load_end": _loadavg(),
  }
  os.makedirs(_OUTDIR.value, exist_ok=True)
  with open(os.path.join(_OUTDIR.value, "train_ratio.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
