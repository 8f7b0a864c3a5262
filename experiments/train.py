r"""Trains a base classifier under splitting noise.

  python -m experiments.train --config=configs/fashion_mnist.py \
      --workdir=runs/fmnist_dssn_0.5 [--config.sigma=0.5]

Rerunning the same command resumes from the last checkpoint in --workdir.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dssn_jax.runtime import host_memory
from dssn_jax.training import classifier
import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Training configuration (configs/*.py[:variant]).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and metrics."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  # Training churns through large per-step buffers: huge pages for them
  # (dssn_jax/runtime/host_memory.py; DSSN_JAX_HUGE_PAGES=0 opts out). The
  # restart comes first: a process that had joined the distributed runtime
  # would leave it (process 0 taking the coordinator down) and join again.
  host_memory.reexec_with_huge_pages()
  experiments.start(argv)
  with experiments.user_errors():
    classifier.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
