"""Module-level functions for tests/benchmarks_test.py to call in a child
process (benchmarks/isolated.py pickles them by name): light imports only,
since each child imports this module."""

import os
import signal


def square(x):
  if not isinstance(x, (int, float)):
    raise ValueError(f"no square of {x!r}")
  return x * x


def segfault():
  os.kill(os.getpid(), signal.SIGSEGV)
