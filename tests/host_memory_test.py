"""Tests for dssn_jax.runtime.host_memory (the huge-page malloc tunable)."""

import os
import subprocess
import sys

import pytest

from dssn_jax.runtime import host_memory

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GLIBC = host_memory._glibc_version()
needs_glibc = pytest.mark.skipif(
    _GLIBC is None or _GLIBC < (2, 35), reason="needs glibc >= 2.35"
)


@needs_glibc
def test_tunable_added_once_and_appended_to_the_users():
  env = host_memory.wanted_environment({})
  assert env["GLIBC_TUNABLES"] == host_memory.TUNABLE
  assert host_memory.wanted_environment(env) is None  # No second restart.
  mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  assert host_memory.wanted_environment(mine)["GLIBC_TUNABLES"] == (
      "glibc.malloc.arena_max=2:" + host_memory.TUNABLE
  )


def test_users_own_setting_and_opt_out_are_kept():
  assert (
      host_memory.wanted_environment(
          {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
      )
      is None
  )
  assert (
      host_memory.wanted_environment({host_memory.OPT_OUT_VARIABLE: "0"})
      is None
  )


@needs_glibc
@pytest.mark.slow
def test_entry_point_restarts_with_the_tunable(tmp_path):
  # A user error after the restart: one message, exit 1, and the restarted
  # process saw the tunable (printed by a sitecustomize on its path).
  (tmp_path / "sitecustomize.py").write_text(
      "import os, sys\n"
      "print('TUNABLES', os.environ.get('GLIBC_TUNABLES'), file=sys.stderr)\n"
  )
  env = {
      k: v
      for k, v in os.environ.items()
      if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT_VARIABLE)
  }
  env["PYTHONPATH"] = str(tmp_path)
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "experiments.train",
          "--config=configs/fashion_mnist.py:smoke",
          f"--workdir={tmp_path / 'run'}",
          "--config.model=nope",
      ],
      cwd=_REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.count("error: Unknown model") == 1
  assert "TUNABLES None" in result.stderr
  assert f"TUNABLES {host_memory.TUNABLE}" in result.stderr
