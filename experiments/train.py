r"""Trains a base classifier under splitting noise.

  python -m experiments.train --config=configs/fashion_mnist.py \
      --workdir=runs/fmnist_dssn_0.5 [--config.sigma=0.5]

Rerunning the same command resumes from the last checkpoint in --workdir.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dssn_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration (configs/*.py[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
