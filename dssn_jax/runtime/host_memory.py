"""Huge pages for XLA:CPU's per-step buffers (glibc malloc tunable).

XLA:CPU allocates a step's temporaries as one block of tens to hundreds of
megabytes, which glibc serves with a fresh `mmap` and returns with `munmap`
every step (blocks over 32 MiB are always mapped; the limit cannot be
raised), so each step faults its memory in again 4 KiB at a time. Training
the Fashion-MNIST small CNN at batch 128 took ~47,700 minor page faults and
0.105 s of kernel time per step (0.28 s of user time). With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` glibc asks for transparent huge
pages on those mappings: ~450 faults and 0.036 s of kernel time per step,
the same user time (benchmarks/train_ratio.py; README "Performance").

The tunable is read when the process starts, so `reexec_with_huge_pages()`
restarts the entry point's interpreter with it (once, before JAX starts).
`DSSN_JAX_HUGE_PAGES=0` opts out; a GLIBC_TUNABLES that already sets
`glibc.malloc.hugetlb` is left as it is.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_VARIABLE = "DSSN_JAX_HUGE_PAGES"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != "glibc":
    return None
  major, minor = version.split(".")[:2]
  return int(major), int(minor)


def wanted_environment(environ=None) -> dict[str, str] | None:
  """The environment to restart with, or None when no restart is needed
  (opted out, not glibc >= 2.35, or the tunable is already set)."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in (
      "0",
      "false",
      "no",
      "off",
  ):
    return None
  if not sys.platform.startswith("linux"):
    return None
  version = _glibc_version()
  if version is None or version < (2, 35):  # hugetlb tunable: glibc 2.35.
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  return env


def reexec_with_huge_pages() -> None:
  """Restarts this interpreter with the huge-page tunable (no return), or
  returns when it is in force already or not wanted."""
  env = wanted_environment()
  argv = getattr(sys, "orig_argv", None)
  if env is None or not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + list(argv[1:]), env)
