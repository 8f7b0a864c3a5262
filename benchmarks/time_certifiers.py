r"""Seconds per image of each run's certifier, timed side by side.

  python -m benchmarks.time_certifiers --config=configs/fashion_mnist.py:study \
      --workdir=runs/study --output=docs/fashion_mnist/timing.json

The results files record each run's time as it ran, and a study's runs may
have shared the machine with each other. This times every run of the
config's study grid again on the same batch of test images, interleaved
(one call of each run per round, after a warm-up call), so the seconds per
image of DSSN, uniform and SSN are comparable. Prints a Markdown table and
writes the JSON.
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from benchmarks import measure
from dssn_jax import jobs
from dssn_jax.data import eval_input
from dssn_jax.runs import certify_batch
from dssn_jax.training import checkpoints
import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration with a `study` grid.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The study's workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Where the JSON goes.")
_IMAGES = flags.DEFINE_integer("images", 16, "Test images per call.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds.")
flags.mark_flags_as_required(["config", "workdir"])


def _certifier(config, c: checkpoints.Classifier, x, index):
  """A call certifying x with the run's method, and its forwards per image."""
  return (
      lambda: certify_batch.certify_batch(
          config.certify, c, c.spec, c.offsets, x, index
      ),
      certify_batch.forward_passes_per_image(config.certify, c.spec),
  )


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():  # Missing runs, data or bad metadata.
    _time_certifiers(_CONFIG.value)


def _time_certifiers(config):
  """Times every study run of config side by side; prints and saves."""
  cfg = config.certify
  runs = [
      (jobs.configure(config, r), r.name) for r in jobs.study_grid(config.study)
  ]
  # The checkpoints first: a missing run is named before any data is read.
  classifiers = {
      name: checkpoints.load_classifier(f"{_WORKDIR.value}/{name}")
      for _, name in runs
  }
  batch = next(
      iter(
          eval_input.eval_dataset(
              config.dataset,
              split=cfg.split,
              start=cfg.start,
              skip=cfg.skip,
              max_examples=_IMAGES.value,
              batch_size=_IMAGES.value,
              data_dir=config.data_dir,
          )
      )
  )
  x = certify_batch.to_inputs(batch["image"])
  calls, forwards = {}, {}
  for run_config, name in runs:
    calls[name], forwards[name] = _certifier(
        run_config, classifiers[name], x, batch["index"]
    )
  seconds = measure.timed_rounds(calls, repeats=_ROUNDS.value, warmup=1)
  report = {
      "images": int(x.shape[0]),
      "rounds": _ROUNDS.value,
      "load_average": measure.load_average(),
      "runs": {},
  }
  lines = [
      "| run | forward passes / image | s / image | ms / forward pass |",
      "|---|---|---|---|",
  ]
  for name, times in seconds.items():
    per_image = float(np.median(times)) / x.shape[0]
    report["runs"][name] = {
        "forwards_per_image": forwards[name],
        "seconds_per_image": per_image,
        "seconds": times,
    }
    lines.append(
        f"| {name} | {forwards[name]:,} | {per_image:.4f} | "
        f"{1e3 * per_image / forwards[name]:.3f} |"
    )
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(report, f, indent=2)
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
