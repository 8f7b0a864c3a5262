"""Calls in a child process, for compilers that can crash theirs.

libtpu's compiler ends its process with a segmentation fault on one of
benchmarks/aot.py's programs (docs/accelerators.md, "Results"); run in the
benchmark's own process, that ends the whole matrix and records nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from concurrent.futures import process
import multiprocessing
from typing import Any


def call(fn: Callable[..., Any], *args: Any, on_crash: Callable[[str], Any]):
  """fn(*args) in a new ("spawn") process; on_crash(message) if it dies.

  Args:
    fn: a module-level function (pickled by name); its arguments and result
      must pickle too.
    *args: its arguments.
    on_crash: called with a description of the crash when the process ends
      without a result (a signal, os._exit); its value is returned.

  Returns:
    fn's result, or on_crash's. Exceptions raised by fn propagate.
  """
  context = multiprocessing.get_context("spawn")
  with futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    job = pool.submit(fn, *args)
    try:
      return job.result()
    except process.BrokenProcessPool as e:
      return on_crash(f"the process ended without a result ({e})")
