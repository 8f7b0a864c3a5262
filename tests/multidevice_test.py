"""Counts on 1, 2 and 8 (fake CPU) devices are identical to one device's.

JAX fixes the device count when it starts, so the check runs in a subprocess
with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Trains models or starts processes: the slow tier (`-m 'not slow'`).
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    import dssn_jax

    assert jax.device_count() == 8, jax.devices()
    spec = dssn_jax.SmoothingSpec(0.12)  # L = 106
    w1 = jax.random.normal(jax.random.key(0), (48, 16)) * 2
    w2 = jax.random.normal(jax.random.key(1), (16, 5))
    apply_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 1) @ w2
    v = dssn_jax.make_offsets(0, (4, 4, 3), spec.levels)
    x = jnp.round(jax.random.uniform(jax.random.key(2), (13, 4, 4, 3)) * 255)
    x = x / 255
    reference = np.asarray(dssn_jax.dssn_counts(apply_fn, x, v, spec))
    key = jax.random.key(3)
    sampled = np.asarray(dssn_jax.sample_counts(
        apply_fn, x, spec, key, noise="uniform", num_samples=200))
    mismatches, checked = [], 0
    # (devices, batch, chunk): every device count with both batch sizes (the
    # batch split and, for 1 input, the split over noise samples), and chunk
    # sizes 1, 7 and L on several meshes.
    cases = [(d, b, 7) for d in (1, 2, 8) for b in (1, 13)]
    cases += [(8, 13, 1), (8, 1, spec.levels)]
    for devices, batch, chunk in cases:
      mesh = dssn_jax.make_mesh(jax.devices()[:devices])
      counts = dssn_jax.dssn_counts(apply_fn, x[:batch], v, spec,
                                    chunk_size=chunk, mesh=mesh)
      checked += 1
      if not np.array_equal(np.asarray(counts), reference[:batch]):
        mismatches.append(("dssn", devices, batch, chunk))
    for devices, batch in ((2, 13), (8, 1)):
      mesh = dssn_jax.make_mesh(jax.devices()[:devices])
      counts = dssn_jax.sample_counts(apply_fn, x[:batch], spec, key,
                                      noise="uniform", num_samples=200,
                                      chunk_size=9, mesh=mesh)
      checked += 1
      if not np.array_equal(np.asarray(counts), sampled[:batch]):
        mismatches.append(("uniform", devices, batch))
    # Under jit, an invalid row (NaN) gets no certificate on every mesh, both
    # when the batch is split and when the noise samples are.
    x_bad = x.at[3].set(jnp.nan)
    for devices, batch in ((8, 13), (2, 13), (8, 4)):
      mesh = dssn_jax.make_mesh(jax.devices()[:devices])
      counts = np.asarray(jax.jit(lambda x: dssn_jax.dssn_counts(
          apply_fn, x, v, spec, chunk_size=7, mesh=mesh))(x_bad[:batch]))
      expected = reference[:batch].copy()
      expected[3] = -1
      checked += 1
      if not np.array_equal(counts, expected):
        mismatches.append(("dssn_nan_jit", devices, batch))
    print(json.dumps({"checked": checked, "mismatches": mismatches,
                      "row_sums": sorted(set(reference.sum(1).tolist()))}))
""")


def test_counts_identical_on_1_2_and_8_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run(
      [sys.executable, "-c", SCRIPT],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["checked"] == 13
  assert report["mismatches"] == []
  assert report["row_sums"] == [106]
