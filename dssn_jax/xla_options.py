"""The XLA options dssn-jax runs with by default, and what was in force.

XLA reads `XLA_FLAGS` once, when JAX starts its first backend. Importing
`dssn_jax` (which every entry point does) calls `apply_defaults()`, which
appends `DEFAULT_FLAGS` to `XLA_FLAGS` while that is still possible, so that
both the command-line tools and a researcher's own call of `dssn_counts` get
them. Rules:

- nothing is changed once a backend has started (the flags would not apply);
- a flag whose name the user's own `XLA_FLAGS` already sets is left as the
  user set it (`--flag=...` there wins);
- a flag the installed jaxlib does not know is skipped: XLA aborts the whole
  process on an unknown flag, so each name is looked up in jaxlib's shared
  libraries first (a byte search, no backend started);
- `DSSN_JAX_XLA_DEFAULTS=0` in the environment opts out of all of them.

The default flag lets XLA:CPU fuse BatchNorm, ReLU, residual adds and
reductions into its YNNPACK convolution kernels: WRN-40-2's forward pass runs
~1.6-1.9x faster on AVX-512 CPUs (README, "Performance"). It changes the low
bits of the logits, so the flags in force are part of "the classifier as
computed" (`computation_record`), which certification records and checks on
resume.
"""

from __future__ import annotations

import glob
import mmap
import os
import shlex

from absl import logging

# Appended to XLA_FLAGS before the backend starts (xla_cpu_* flags act on the
# CPU backend only; accelerator backends ignore them).
DEFAULT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce",)
OPT_OUT_VARIABLE = "DSSN_JAX_XLA_DEFAULTS"
# Flags that choose how many devices or what to dump, not what is computed:
# left out of the record so that a resume on another fake device count is
# not refused (counts do not depend on the device count).
NOT_COMPUTATION = ("--xla_force_host_platform_device_count", "--xla_dump")

_state = {"applied": (), "skipped": (), "user_flags": None}


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def _jaxlib_libraries() -> list[str]:
  """The shared libraries of the installed jaxlib (where XLA lives)."""
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  root = os.path.dirname(jaxlib.__file__)
  libraries = glob.glob(os.path.join(root, "*.so"))
  return sorted(libraries, key=os.path.getsize, reverse=True)


def jaxlib_knows(flag: str, libraries: list[str] | None = None) -> bool:
  """Whether the installed jaxlib defines the flag (its name, without the
  leading dashes, appears in one of jaxlib's shared libraries)."""
  name = _flag_name(flag).lstrip("-").encode()
  for path in _jaxlib_libraries() if libraries is None else libraries:
    try:
      with (
          open(path, "rb") as f,
          mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
      ):
        if m.find(name) >= 0:
          return True
    except (OSError, ValueError):  # Unreadable or empty file.
      continue
  return False


def _backend_started() -> bool:
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
          "had started its backend before dssn_jax was imported "
          "(import dssn_jax first to get them).",
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
          "XLA option %s skipped: the installed jaxlib does not " "know it.",
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
