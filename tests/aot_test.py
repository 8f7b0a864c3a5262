"""The programs compile for TPUs and GPUs, and fit their memory.

Compiled, not only lowered: `dssn_jax.runs.aot` compiles the DSSN and
randomized vote programs and the training step for compile-only devices of
a TPU v5e-8 slice (16 GiB per chip, the smallest memory of our targets)
and 8 H100s, with the TPU compiler (libtpu) and the GPU compiler (the CUDA
PJRT plugin), at the library's default forward batch per chip. A sharding
that does not partition, an op without a lowering on either, or a default
that no longer fits a chip fails here. The compilers live in .venv-aot
(setup.sh builds it: they print start-up lines and probe for chips, so
they stay out of the project's CPU virtualenv), and
tests/programs/compile_for_accelerators.py runs there in a subprocess.

Without .venv-aot the accelerator tests skip outside CI and fail in CI
(.ci/run sets CI and runs setup.sh, which builds it). The CPU tests below
check the AOT path itself: the program compiled from abstract inputs is
the one a call runs (same counts), and the cost bookkeeping.
"""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dssn_jax.core import dssn
from dssn_jax.core import smoothing
from dssn_jax.runs import aot
from dssn_jax.runtime import accelerators
from tests.conftest import cpu_subprocess_env
from tests.conftest import REPO_ROOT

AOT_PYTHON = REPO_ROOT / ".venv-aot" / "bin" / "python"


def _compile_in_aot_venv(model: str) -> dict:
  """{"target/program": record} of one model, compiled by
  tests/programs/compile_for_accelerators.py in a process of .venv-aot."""
  if not AOT_PYTHON.exists():
    message = (
        f"{AOT_PYTHON} is missing: `bash setup.sh` builds it (libtpu and the "
        f"CUDA PJRT plugin, docs/accelerators.md)."
    )
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  env = cpu_subprocess_env()
  env.pop("XLA_FLAGS", None)  # The CPU backend's options, not theirs.
  # Compile-only devices cannot load executables from the persistent cache.
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  # libtpu locks a file for one process per host; none opens a chip here,
  # so a benchmark or another test may compile at the same time.
  env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
  result = subprocess.run(
      [AOT_PYTHON, "-m", "tests.programs.compile_for_accelerators", model],
      cwd=REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=1800,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-5000:]
  return json.loads(result.stdout.strip().splitlines()[-1])[model]


def _check_fits(report: dict, programs) -> None:
  assert sorted(report) == sorted(
      f"{t}/{p}" for t in ("v5e-8", "8x H100") for p in programs
  )
  for name, program in report.items():
    assert 0 < program["device_bytes"] <= program["hbm_bytes"], (name, program)
    if program["forward_batch"] is not None:
      # One image per chip: the chunk is the default forward batch per chip
      # (evened out over the chunks, never above it).
      assert 256 <= program["forward_batch"] <= 512, (name, program)


# Fast tier: the small CNN's six compiles take about 20 s on a 2-core host.
def test_small_cnn_compiles_for_tpu_and_gpu_within_hbm():
  _check_fits(
      _compile_in_aot_venv("small_cnn"), ("dssn", "uniform", "train_step")
  )


# Slow tier: ResNet-50's DSSN vote program takes about 45 s on the TPU.
@pytest.mark.slow
def test_resnet50_compiles_for_tpu_and_gpu_within_hbm():
  _check_fits(_compile_in_aot_venv("resnet50"), ("dssn",))


def _small_classifier():
  model = aot.classifier_model("small_cnn", "fashion_mnist", "float32")
  module_params = jax.tree.map(
      lambda s: jnp.asarray(
          np.random.RandomState(0).normal(size=s.shape) * 0.1, s.dtype
      ),
      model.variables,
  )
  return model, module_params


def test_aot_compiled_program_gives_the_counts_of_a_call():
  model, variables = _small_classifier()
  spec = smoothing.SmoothingSpec(0.12, 255)
  x = np.random.RandomState(1).randint(0, 256, (3, 28, 28, 1)) / 255.0
  x = x.astype(np.float32)
  v = smoothing.make_offsets(0, model.input_shape, spec.levels)
  program, args = aot.dssn_program(model, 0.12, 3, None, chunk_size=16)
  compiled = aot.compile_vote_program(program, args)
  assert compiled.device_bytes > 0 and compiled.flops > 0
  placed = program.place(variables, x, np.zeros(3, np.int32), v)
  counts = compiled.compiled(*placed)
  expected = dssn.dssn_counts(
      model.apply_fn, x, v, spec, params=variables, chunk_size=16
  )
  np.testing.assert_array_equal(np.asarray(counts), np.asarray(expected))
  assert np.all(np.asarray(counts).sum(1) == spec.levels)


def test_one_chunk_is_the_scan_body_and_chunks_scale_it():
  model, _ = _small_classifier()
  program, args = aot.dssn_program(model, 0.5, 2, None, chunk_size=100)
  assert program.num_items == 441
  assert aot.chunks_per_device(program, 2) == 5  # 4 x 100, then 41.
  body = aot.one_chunk(program, 2)
  assert (body.num_items, body.chunk_size) == (100, 100)
  assert aot.chunks_per_device(body, 2) == 1
  # XLA counts a loop's body once: the whole program costs what one chunk
  # does (plus the loop), so the benchmark scales one chunk's cost.
  whole = aot.compile_vote_program(program, args).flops
  one = aot.compile_vote_program(body, args).flops
  assert one == pytest.approx(whole, rel=0.05)


def test_accelerator_table():
  for target in accelerators.TARGETS.values():
    chip = target.chip
    assert chip.platform in ("tpu", "cuda")
    assert chip.hbm_bytes >= 16 * 2**30
    assert chip.peak_flops("bfloat16") >= chip.peak_flops("float32")
    if chip.platform == "cuda":
      config = accelerators.gpu_target_config(chip)
      assert f'device_description_str: "{chip.name}"' in config
      assert f"device_memory_size: {chip.hbm_bytes}" in config
  assert accelerators.TARGETS["v5e-256"].chips == 256
  v5p = accelerators.TPU_V5P
  # 1 TFLOP at 459 TFLOP/s; 10 GB at 2.765 TB/s bounds it instead.
  assert accelerators.roofline_seconds(1e12, None, v5p, "bfloat16") == (
      pytest.approx(1 / 459)
  )
  assert accelerators.roofline_seconds(1e12, 1e10, v5p, "bfloat16") == (
      pytest.approx(1e10 / 2765e9)
  )
