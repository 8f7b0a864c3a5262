"""Thin absl entry points: `python -m experiments.<name>`."""

import contextlib
import os
import sys

# Before anything imports TensorFlow: its C++ start-up lines would come before
# our own output (a user's own setting wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from dssn_jax.runtime import xla_options

# The CPU's XLA options, before anything starts a JAX backend (importing
# dssn_jax leaves the process alone; the entry points choose the defaults).
xla_options.apply_defaults()

# Multi-host runs (README, "Multi-host"): every entry point that computes
# joins the distributed runtime in `start`, before any JAX computation.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process: host:port of process 0's coordinator (with "
    "--num_processes and --process_id on every process).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process: number of processes."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process: this process's id, 0 .. N-1."
)
_AUTO = flags.DEFINE_bool(
    "distributed_auto",
    False,
    "Multi-process: let JAX detect the cluster (Cloud TPU pod, SLURM, Open "
    "MPI) with a plain jax.distributed.initialize().",
)
_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout",
    120,
    "Multi-process: seconds to wait for every process to join.",
)


def start(argv) -> None:
  """The common start of an entry point: no stray arguments, Orbax's
  per-file INFO logs hidden unless --verbosity was given, and the
  distributed runtime joined when the flags ask for it."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from dssn_jax.runtime import distributed  # pylint: disable=g-import-not-at-top

  with user_errors():
    distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
        auto=_AUTO.value,
        timeout_s=_TIMEOUT.value,
        on_timeout=_exit_now,
    )


def _exit_now(message: str) -> None:
  """Ends the program from any thread with the one-line error (the XLA
  runtime blocks the main thread while it waits for the other processes)."""
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


@contextlib.contextmanager
def user_errors():
  """Ends the program with the message and exit code 1 on a user error (bad
  input, mismatched metadata, missing files): the message names the fix, a
  traceback would only hide it."""
  try:
    yield
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except OSError as e:  # E.g. a read-only or full disk under --workdir.
    where = f" {e.filename!r}" if e.filename else ""
    sys.exit(
        f"error: cannot write or read{where}: {e.strerror or e}. Check "
        f"that the path exists and that you may write there (a "
        f"read-only or full file system?)."
    )
