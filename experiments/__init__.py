"""Thin absl entry points: `python -m experiments.<name>`."""

import contextlib
import os
import sys

# Before anything imports TensorFlow: its C++ start-up lines would come before
# our own output (a user's own setting wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging


def start(argv) -> None:
  """The common start of an entry point: no stray arguments, and Orbax's
  per-file INFO logs hidden unless --verbosity was given."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


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
    sys.exit(f"error: cannot write or read{where}: {e.strerror or e}. Check "
             f"that the path exists and that you may write there (a "
             f"read-only or full file system?).")
