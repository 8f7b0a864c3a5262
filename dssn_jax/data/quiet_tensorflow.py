"""TensorFlow and TFDS for the input pipeline: imported quietly, kept off
the accelerators.

TensorFlow only feeds the input pipeline. Importing it writes lines such as
the oneDNN notice and CPU feature guards to the process's stderr before
TF_CPP_MIN_LOG_LEVEL is read, so they would come before our own output. The
library imports TensorFlow only through this module, which mutes the native
stderr (fd 2) for the duration of the import; Python exceptions are printed
later and are unaffected. TF_CPP_MIN_LOG_LEVEL=0 (a user's own setting wins)
shows the lines.

TensorFlow must also leave the GPUs and TPUs to JAX:
:func:`hide_tf_from_accelerators` runs before any dataset is read
(`builders.get_builder` calls it), and entry points call it at start-up.
"""

import contextlib
import os
import sys

from absl import logging


@contextlib.contextmanager
def _native_stderr_silenced():
  """Sends the process's native stderr (fd 2) to /dev/null for a while."""
  try:
    saved = os.dup(2)
  except OSError:  # No fd 2 (some embedded interpreters): nothing to hide.
    yield
    return
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    sys.stderr.flush()
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
with (
    _native_stderr_silenced()
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0"
    else contextlib.nullcontext()
):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

__all__ = ["hide_tf_from_accelerators", "tf", "tfds"]


def hide_tf_from_accelerators() -> None:
  """Makes GPUs and TPUs invisible to TensorFlow (it only feeds the input).

  Without this, TF would grab all GPU memory that JAX needs. Must run before
  TensorFlow initializes its devices; later calls are no-ops (with a warning
  if TF already sees an accelerator).
  """
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:  # Devices already initialized.
      if tf.config.get_visible_devices(kind):
        logging.warning(
            "TensorFlow already initialized its %s devices; could not hide "
            "them. Call dssn_jax.data.quiet_tensorflow."
            "hide_tf_from_accelerators() earlier.",
            kind,
        )
