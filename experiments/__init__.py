"""Thin absl entry points: `python -m experiments.<name>`."""

import contextlib
import sys

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
