r"""Measures the certifier against this machine's own limits.

  python -m experiments.benchmark --config=configs/benchmark.py \
      --workdir=runs/benchmark

Writes benchmark.json and benchmark.md into --workdir (after every section)
and prints the Markdown tables.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dssn_jax import benchmark
from dssn_jax import data
import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Benchmark configuration (configs/benchmark.py[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for benchmark.json and benchmark.md.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  experiments.start(argv)
  data.hide_tf_from_accelerators()
  report = benchmark.run_benchmark(_CONFIG.value, _WORKDIR.value)
  print(benchmark.to_markdown(report))


if __name__ == "__main__":
  app.run(main)
