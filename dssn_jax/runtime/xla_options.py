"""The XLA options the command-line tools run with, and what was in force.

XLA reads `XLA_FLAGS` once, when JAX starts its first backend. Importing
`dssn_jax` changes nothing in the process. The entry points of experiments/
and benchmarks/ call `apply_defaults()` before they import JAX, and a
library user who wants the same speed calls `dssn_jax.use_cpu_defaults()`
once, before the first computation. It appends `DEFAULT_FLAGS` to
`XLA_FLAGS` while that is still possible. Rules:

- nothing is changed once a backend has started (the flags would not apply);
- a flag whose name the user's own `XLA_FLAGS` already sets is left as the
  user set it (`--flag=...` there wins);
- a flag the installed jaxlib does not know is skipped, since XLA aborts the
  whole process on an unknown flag. `TESTED_FLAGS` says which jaxlib
  versions are known to accept each flag (constraints.txt pins jaxlib to
  one of them, and tests/xla_options_test.py starts a backend with every
  default flag, so the table is checked whenever the pin moves); for another
  jaxlib the flag is tried once in a child process that starts a CPU
  backend with it (about 2 s), rather than guessed;
- `DSSN_JAX_XLA_DEFAULTS=0` in the environment opts out of all of them.

The default flag lets XLA:CPU fuse BatchNorm, ReLU, residual adds and
reductions into its YNNPACK convolution kernels: WRN-40-2's forward pass runs
~1.5x faster on AVX-512 CPUs (docs/performance.md). It changes the low bits
of the logits, so the flags in force are part of "the classifier as computed"
(`computation_record`), which certification records and checks on resume.
xla_cpu_* flags act on the CPU backend only: GPU and TPU backends ignore them.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys

from absl import logging

# Appended to XLA_FLAGS before the backend starts (xla_cpu_* flags act on the
# CPU backend only; accelerator backends ignore them).
DEFAULT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce",)
# jaxlib versions (major, minor) known to accept each flag: tested in CI with
# the pinned jaxlib (tests/xla_options_test.py) whenever the pin moves.
TESTED_FLAGS = {
    "--xla_cpu_experimental_ynn_fusion_type": ((0, 10),),
    "--xla_force_host_platform_device_count": ((0, 9), (0, 10)),
}
OPT_OUT_VARIABLE = "DSSN_JAX_XLA_DEFAULTS"
# Flags that choose how many devices or what to dump, not what is computed:
# left out of the record so that a resume on another fake device count is
# not refused (counts do not depend on the device count).
NOT_COMPUTATION = ("--xla_force_host_platform_device_count", "--xla_dump")

_state = {"applied": (), "skipped": (), "user_flags": None}


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top

    major, minor = metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except Exception:  # pylint: disable=broad-except
    return None  # Not installed, or a version we cannot read.


@functools.cache
def _accepted_by_backend(flag: str) -> bool:
  """Starts a CPU backend in a child process with the flag: XLA aborts a
  process on a flag it does not know, so the exit status answers."""
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
  try:
    result = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
  except (OSError, subprocess.TimeoutExpired):
    return False
  return result.returncode == 0


def jaxlib_knows(flag: str) -> bool:
  """Whether the installed jaxlib accepts the flag: from `TESTED_FLAGS` for
  a tested jaxlib, else by starting a backend with it in a child process."""
  tested = TESTED_FLAGS.get(_flag_name(flag), ())
  if _jaxlib_version() in tested:
    return True
  return _accepted_by_backend(flag)


def _backend_started() -> bool:
  """Whether JAX has started a backend (then XLA_FLAGS is read already).

  JAX has no public query for this, so the private one is used here, inside
  the call that needs it (never at import). Without JAX imported, no
  backend can have started; if the private name moves, the answer is "yes",
  which only means that the defaults are not applied.
  """
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return True  # Unknown: do not touch what may already be in force.


def opted_out() -> bool:
  value = os.environ.get(OPT_OUT_VARIABLE, "1").strip().lower()
  return value in ("0", "false", "no", "off")


def apply_defaults(flags=DEFAULT_FLAGS) -> tuple[str, ...]:
  """Appends the default flags to XLA_FLAGS if JAX has not started yet.

  Returns:
    The flags added (empty when opted out, too late, or all present).
  """
  if _state["user_flags"] is None:
    _state["user_flags"] = os.environ.get("XLA_FLAGS", "")
  if opted_out():
    return ()
  if _backend_started():
    missing = [
        f for f in flags if _flag_name(f) not in os.environ.get("XLA_FLAGS", "")
    ]
    if missing:
      logging.info(
          "dssn-jax's default XLA options %s are not in force: JAX "
          "had started its backend already (call "
          "dssn_jax.use_cpu_defaults() before the first computation).",
          missing,
      )
    return ()
  current = shlex.split(os.environ.get("XLA_FLAGS", ""))
  present = {_flag_name(f) for f in current}
  added, skipped = [], []
  for flag in flags:
    if _flag_name(flag) in present:
      continue  # The user's own value wins.
    if not jaxlib_knows(flag):
      skipped.append(flag)
      logging.info(
          "XLA option %s skipped: the installed jaxlib does not know it.",
          flag,
      )
      continue
    added.append(flag)
  if added:
    os.environ["XLA_FLAGS"] = " ".join(current + added)
  _state["applied"] = tuple(_state["applied"]) + tuple(added)
  _state["skipped"] = tuple(skipped)
  return tuple(added)


def flags_in_force() -> str:
  """XLA_FLAGS as the backend reads it, less the device-count and dump
  flags (they do not change what is computed)."""
  flags = shlex.split(os.environ.get("XLA_FLAGS", ""))
  return " ".join(
      f for f in flags if not _flag_name(f).startswith(NOT_COMPUTATION)
  )


def computation_record(compute_dtype: str) -> dict[str, str]:
  """What defines "the classifier as computed" besides its weights.

  Args:
    compute_dtype: the dtype of the classifier's convolutions and matmuls.

  Returns:
    backend, jax and jaxlib versions, compute dtype and the XLA flags in
    force (a change of any of them may change low bits of the logits).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top

  return {
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "compute_dtype": str(compute_dtype),
      "xla_flags": flags_in_force(),
  }


def applied() -> tuple[str, ...]:
  """The default flags this process added to XLA_FLAGS."""
  return tuple(_state["applied"])
