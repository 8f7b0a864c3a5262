r"""Early-exit DSSN and sequential uniform on meshes of 2 and 4 fake CPU
devices against the full counts on one device.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
      python -m tests.programs.early_exit_devices

early_exit_test.py runs it in a subprocess (JAX fixes the device count at
start-up). It prints one JSON line: the cases checked and the mismatches.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

import dssn_jax
from dssn_jax.core import dssn
from dssn_jax.core import dssn_decide
from dssn_jax.core import randomized
from dssn_jax.core import randomized_decide

SHAPE = (6, 6, 1)


def _classifier():
  w1 = jax.random.normal(jax.random.key(0), (36, 16)) * 1.5
  w2 = jax.random.normal(jax.random.key(1), (16, 5))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 1) @ w2


def main():
  apply_fn = _classifier()
  rng = np.random.default_rng(0)
  x = (rng.integers(0, 256, (11,) + SHAPE) / 255).astype(np.float32)
  checked, mismatches = 0, []
  for sigma in (0.25, 1.0):
    spec = dssn_jax.SmoothingSpec(sigma)
    v = dssn_jax.make_offsets(2, SHAPE, spec.levels)
    counts = np.asarray(dssn.dssn_counts(apply_fn, x, v, spec))
    pred, _, radius = dssn.certify_from_counts(counts, spec)
    radii = np.unique(np.r_[0.0, radius, radius + 0.5 / 255])
    for devices in (2, 4):
      mesh = dssn_jax.make_mesh(jax.devices()[:devices])
      d = dssn_decide.dssn_decide(
          apply_fn, x, v, spec, radii, slots=60, pool_size=5, mesh=mesh
      )
      checked += 1
      same = np.array_equal(d.pred, pred) and np.array_equal(
          d.certified, radius[:, None] >= radii[None]
      )
      if not same:
        mismatches.append(("dssn", sigma, devices))
  spec = dssn_jax.SmoothingSpec(0.5)
  key, rows = jax.random.key(4), np.arange(11) + 7
  fixed = randomized.certify_randomized(
      apply_fn, x, spec, key, noise="uniform", n0=16, n=300, row_ids=rows
  )
  mesh = dssn_jax.make_mesh(jax.devices()[:4])
  seq = randomized_decide.sequential_certify(
      apply_fn,
      x,
      spec,
      key,
      [0.0, 0.3],
      noise="uniform",
      n0=16,
      n_max=300,
      first_look=300,
      row_ids=rows,
      slots=64,
      pool_size=3,
      mesh=mesh,
  )
  checked += 1
  if not (
      np.array_equal(seq.pred, fixed.pred)
      and np.array_equal(seq.count_top, fixed.count_top)
  ):
    mismatches.append(("uniform", 0.5, 4))
  print(json.dumps({"checked": checked, "mismatches": mismatches}))


if __name__ == "__main__":
  main()
