"""Thin absl entry points: `python -m experiments.<name>`."""

import contextlib
import logging as std_logging
import os
import sys

# Before anything imports TensorFlow: its C++ start-up lines would come before
# our own output (a user's own setting wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

import dssn_jax
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


class _OwnInfoOnly(std_logging.Filter):
  """Warnings and errors from anywhere, INFO lines from dssn-jax itself
  (epoch lines, resumes): the per-file INFO logs of Orbax and TFDS stay
  hidden without an explicit --verbosity."""

  _OWN = tuple(
      os.path.dirname(os.path.abspath(package.__file__)) + os.sep
      for package in (dssn_jax, sys.modules[__name__])
  )

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return os.path.abspath(record.pathname).startswith(self._OWN)


def start(argv) -> None:
  """The common start of an entry point: no stray arguments, INFO lines of
  dssn-jax only (Orbax's and TFDS's per-file ones hidden) unless --verbosity
  was given, and the distributed runtime joined when the flags ask for
  it."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
  from dssn_jax.runtime import distributed  # pylint: disable=g-import-not-at-top

  with user_errors():
    distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
        auto=_AUTO.value,
        timeout_s=_TIMEOUT.value,
        on_timeout=_exit_now,
        workdir=getattr(flags.FLAGS, "workdir", None),
    )


def _exit_now(message: str) -> None:
  """Ends the program from any thread with the one-line error (the XLA
  runtime blocks the main thread while it waits for the other processes)."""
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def check_directory_flag(name: str, path: str) -> None:
  """Raises ValueError when --name names an existing file (a directory, or
  nothing yet, is fine)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(
        f"--{name}={path} is a file, not a directory; name a directory "
        "(made if missing)."
    )


INTERRUPTED = "interrupted; rerun the same command to resume"


def _one_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _multi_process() -> bool:
  if "jax" not in sys.modules:
    return False
  import jax  # pylint: disable=g-import-not-at-top

  return jax.distributed.is_initialized() and jax.process_count() > 1


def _end(message: str, exit_code: int = 1, prefix: str = "error: "):
  """Ends the program with `error: message`: on several processes at once
  (the others are told and stop; no exit handler waits for them)."""
  from dssn_jax.runtime import distributed  # pylint: disable=g-import-not-at-top

  if _multi_process():
    distributed.fail(message, exit_code, prefix)
  distributed.write_line(f"{prefix}{message}")
  raise SystemExit(exit_code)


@contextlib.contextmanager
def user_errors():
  """Ends the program with one line on a user error (bad input, mismatched
  metadata, missing files: exit code 1, the message names the fix; a
  traceback would only hide it) and on Ctrl-C (exit code 130, the run
  resumes). On several processes every error, expected or not, ends all of
  them within about a second (`distributed.fail`), never a hang."""
  try:
    yield
  except KeyboardInterrupt:
    _end(INTERRUPTED, 130, prefix="")
  except (ValueError, FileNotFoundError) as e:
    _end(str(e))
  except OSError as e:  # E.g. a read-only or full disk under --workdir.
    where = f" {e.filename!r}" if e.filename else ""
    _end(
        f"cannot write or read{where}: {e.strerror or e}. Check "
        f"that the path exists and that you may write there (a "
        f"read-only or full file system?)."
    )
  except SystemExit as e:
    if e.code in (0, None) or not _multi_process():
      raise
    _end(str(e.code).removeprefix("error: "))
  except Exception as e:  # pylint: disable=broad-except
    if not _multi_process():
      raise
    if type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError"):
      # A collective whose peer ended (gloo: connection closed).
      _end(
          "a collective with the other processes failed (did one of them "
          f"end?): {_one_line(e)[:300]}. Rerun the same command on every "
          "process to resume."
      )
    import traceback  # pylint: disable=g-import-not-at-top

    traceback.print_exc()  # Not a user error: the stack helps its report.
    _end(f"{type(e).__name__}: {_one_line(e)}")
