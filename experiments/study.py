r"""The reproduction study: DSSN vs the randomized baselines, one command.

  python -m experiments.study --config=configs/fashion_mnist.py:study \
      --workdir=runs/study --outdir=docs/fashion_mnist

Trains and certifies every run of the config's `study` grid (same model,
data, training budget and test images), then writes tables.md and the plots
of all runs into --outdir. Rerunning resumes where it stopped.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dssn_jax import jobs
from dssn_jax.runtime import host_memory
import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration with a `study` grid.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Runs go to workdir/<run>.")
_OUTDIR = flags.DEFINE_string("outdir", None, "Tables and plots of all runs.")
flags.mark_flags_as_required(["config", "workdir", "outdir"])


def main(argv):
  # Training churns through large per-step buffers: huge pages for them
  # (dssn_jax/runtime/host_memory.py; DSSN_JAX_HUGE_PAGES=0 opts out). The
  # restart comes first: a process that had joined the distributed runtime
  # would leave it (process 0 taking the coordinator down) and join again.
  host_memory.reexec_with_huge_pages()
  experiments.start(argv)
  config = _CONFIG.value
  runs = jobs.study_grid(config.study)
  with experiments.user_errors():
    print(
        jobs.run_study(
            config, runs, _WORKDIR.value, _OUTDIR.value, report=print
        )
    )


if __name__ == "__main__":
  app.run(main)
