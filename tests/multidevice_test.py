"""Counts on 1, 2 and 8 (fake CPU) devices are identical to one device's.

JAX fixes the device count when it starts, so the check
(tests/programs/multidevice_counts.py) runs in a subprocess with 8 fake CPU
devices.
"""

import json

import pytest

from tests.conftest import cpu_subprocess_env
from tests.conftest import run_python

# Starts a process: the slow tier (`-m 'not slow'`).
pytestmark = pytest.mark.slow


def test_counts_identical_on_1_2_and_8_devices():
  result = run_python(
      ["-m", "tests.programs.multidevice_counts"], env=cpu_subprocess_env(8)
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  # 13 cases of counts over meshes, 2 programs compiled ahead from abstract
  # inputs that the call then runs without compiling, and the shardings an
  # abstract batch may carry.
  assert report["checked"] == 16
  assert report["mismatches"] == []
  assert report["row_sums"] == [106]
