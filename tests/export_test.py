"""The jitted programs lower for GPU and TPU, checked on a CPU-only machine.

`jax.export` lowers for platforms ("cuda", "tpu") without an accelerator, so
a change that cannot compile there (an op without a GPU/TPU lowering, a
sharding that does not partition) fails here. Lowered, never run: WRN-40-2
and ResNet-50 in bfloat16, with the batch sharded over a 4-device mesh, for
the DSSN vote program, the randomized vote program and the training step
(tests/programs/lower_for_accelerators.py, in a subprocess with 4 fake CPU
devices: JAX fixes the device count at start-up).
"""

import json

import pytest

from tests.conftest import cpu_subprocess_env
from tests.conftest import run_python


@pytest.mark.slow
def test_vote_programs_and_train_step_lower_for_gpu_and_tpu():
  result = run_python(
      ["-m", "tests.programs.lower_for_accelerators"],
      env=cpu_subprocess_env(4),
  )
  assert result.returncode == 0, result.stderr[-5000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  classes = {"wrn_40_2": 10, "resnet50": 1000}
  assert len(report) == 6, sorted(report)
  for name, exported in report.items():
    model, program = name.split("/")
    assert exported["platforms"] == ["cuda", "tpu"], name
    assert exported["devices"] == 4, name
    if program == "train_step":
      continue  # (state, metrics): checked by the lowering itself.
    assert exported["out"] == [[[8, classes[model]], "int32"]], name
