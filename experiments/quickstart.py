r"""The quickstart: train, certify and analyze on Fashion-MNIST in one go.

  python -m experiments.quickstart --workdir=runs/quickstart

Trains a small CNN under DSSN noise (sigma = 0.5), certifies 300 test images
exactly, prints the certified-accuracy table and writes the plots into
--workdir/analysis. Rerunning resumes.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dssn_jax import jobs
from dssn_jax.runtime import host_memory
import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    "configs/fashion_mnist.py:quickstart",
    "Configuration (configs/*.py[:variant]).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/quickstart", "Directory for everything the job writes."
)


def main(argv):
  # Training churns through large per-step buffers: huge pages for them
  # (dssn_jax/runtime/host_memory.py; DSSN_JAX_HUGE_PAGES=0 opts out). The
  # restart comes first: a process that had joined the distributed runtime
  # would leave it (process 0 taking the coordinator down) and join again.
  host_memory.reexec_with_huge_pages()
  experiments.start(argv)
  with experiments.user_errors():
    print(
        jobs.train_certify_analyze(_CONFIG.value, _WORKDIR.value, report=print)
    )


if __name__ == "__main__":
  app.run(main)
