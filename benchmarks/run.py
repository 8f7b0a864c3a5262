r"""Measures the certifier against this machine's own limits.

  python -m benchmarks.run --config=configs/benchmark.py \
      --workdir=runs/benchmark

Writes benchmark.json and benchmark.md into --workdir (after every section)
and prints the Markdown tables; with `config.torch_peer`, then the PyTorch
eager peer side by side (benchmarks/torch_peer.py; torch_peer.{json,md}).
`config.xla_flags` is appended to XLA_FLAGS
before JAX starts its backend (pass --config.xla_flags='' for XLA's
defaults).
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Benchmark configuration (configs/benchmark.py[:variant]).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for benchmark.json and benchmark.md."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  config = _CONFIG.value
  if config.xla_flags:
    # Read once, when JAX creates its backend: before anything runs on it
    # (a multi-process start-up in `start` creates it).
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), config.xla_flags) if f
    )
  experiments.start(argv)
  # pylint: disable=g-import-not-at-top
  from benchmarks import certifier
  from benchmarks import certifier_markdown
  # pylint: enable=g-import-not-at-top
  report = certifier.run_benchmark(config, _WORKDIR.value, log=print)
  print(certifier_markdown.to_markdown(report))
  if config.get("torch_peer"):
    from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top

    peer = torch_peer.run(
        _WORKDIR.value, sigmas=tuple(config.sigmas), **config.torch_peer
    )
    if peer:
      print(torch_peer.markdown(peer))


if __name__ == "__main__":
  app.run(main)
