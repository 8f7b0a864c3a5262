"""Calls in a child process, for compilers that can crash theirs.

libtpu's compiler ends its process with a segmentation fault on one of
benchmarks/aot.py's programs (docs/accelerators.md, "Results"); run in the
benchmark's own process, that ends the whole matrix and records nothing.
"""

from __future__ import annotations

from collections.abc import Callable
import multiprocessing
import signal
from typing import Any


def _child(connection, fn, args) -> None:
  try:
    outcome = ("return", fn(*args))
  except Exception as e:  # pylint: disable=broad-except
    outcome = ("raise", e)
  connection.send(outcome)
  connection.close()


def _how_it_ended(exitcode: int | None) -> str:
  if exitcode is not None and exitcode < 0:
    return f"killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
  return f"exited with code {exitcode}"


def call(fn: Callable[..., Any], *args: Any, on_crash: Callable[[str], Any]):
  """fn(*args) in a new ("spawn") process; on_crash(message) if it dies.

  Args:
    fn: a module-level function (pickled by name); its arguments, result and
      exceptions must pickle too.
    *args: its arguments.
    on_crash: called with how the process ended (e.g. "the process was
      killed by signal 11 (SIGSEGV) before it returned") when it ends
      without a result; its value is returned.

  Returns:
    fn's result, or on_crash's. An exception raised by fn is raised here.
  """
  context = multiprocessing.get_context("spawn")
  receiver, sender = context.Pipe(duplex=False)
  child = context.Process(target=_child, args=(sender, fn, args))
  child.start()
  sender.close()  # The child's end: EOF here once the child is gone.
  try:
    kind, value = receiver.recv()
  except EOFError:
    child.join()
    return on_crash(
        f"the process was {_how_it_ended(child.exitcode)} before it returned"
    )
  finally:
    receiver.close()
  child.join()
  if kind == "raise":
    raise value
  return value
