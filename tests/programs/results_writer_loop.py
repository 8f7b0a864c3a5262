r"""A results-writer loop that results_test.py kills with SIGKILL.

  python -m tests.programs.results_writer_loop PATH N BATCH slow|fast

Writes rows for images 0..N-1 of a DSSN results file at PATH, BATCH rows per
`write_rows`, skipping the rows already there, and prints "finished". The
values of a row are a function of its idx, so a reader can check every row.
With "slow", os.write writes at most 1000 bytes per call (a partial write, as
on a slow or network file system), so a kill often lands in the middle of a
batch and tears a row.

The test starts it dozens of times, so it loads the results modules without
running dssn_jax/__init__.py, which imports JAX: they need only NumPy
(`load_results_modules`, also what results_test checks for heavy imports).
"""

import importlib
import os
import pathlib
import sys
import time
import types

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[2] / "dssn_jax"


def load_results_modules():
  """dssn_jax.runs.results_writer and results_reader, imported without the
  package's __init__ (nothing else of the package is loaded)."""
  if "dssn_jax" not in sys.modules:
    package = types.ModuleType("dssn_jax")
    package.__path__ = [str(_PACKAGE_DIR)]
    sys.modules["dssn_jax"] = package
  return (
      importlib.import_module("dssn_jax.runs.results_writer"),
      importlib.import_module("dssn_jax.runs.results_reader"),
  )


def _slow_writes() -> None:
  real_write = os.write

  def slow_write(fd, data):
    time.sleep(0.0002)
    return real_write(fd, bytes(data[:1000]))

  os.write = slow_write


def main(argv) -> None:
  path, n, batch, speed = argv[1], int(argv[2]), int(argv[3]), argv[4]
  results_writer, _ = load_results_modules()
  if speed == "slow":
    _slow_writes()
  meta = {"sigma": 0.5, "q": 255}
  with results_writer.ResultsWriter(path, "dssn", meta) as writer:
    todo = [i for i in range(n) if i not in writer.done_indices]
    for start in range(0, len(todo), batch):
      idx = todo[start : start + batch]
      steps = [i % 300 for i in idx]
      writer.write_rows(
          {
              "idx": idx,
              "label": [i % 10 for i in idx],
              "predict": [i % 10 for i in idx],
              "radius": [s / 255 for s in steps],
              "correct": [1] * len(idx),
              "time": [i / 1000 for i in idx],
              "count_top": [100 + 2 * s for s in steps],
              "count_runner_up": [100] * len(idx),
              "steps": steps,
          }
      )
  print("finished")


if __name__ == "__main__":
  main(sys.argv)
