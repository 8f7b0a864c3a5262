r"""Counts on meshes of 1, 2 and 8 fake CPU devices against one device's.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python -m tests.programs.multidevice_counts

multidevice_test.py runs it in a subprocess (JAX fixes the device count at
start-up). It prints one JSON line: how many cases it checked, the ones
whose counts differ from the one-device counts, and the row sums of those.
"""

import json

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

import dssn_jax
from dssn_jax.core import dssn

SPEC = dssn_jax.SmoothingSpec(0.12)  # L = 106.
SHAPE = (4, 4, 3)


def _classifier():
  """A 2-layer MLP apply_fn on (4, 4, 3) inputs, 5 classes."""
  w1 = jax.random.normal(jax.random.key(0), (48, 16)) * 2
  w2 = jax.random.normal(jax.random.key(1), (16, 5))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 1) @ w2


def _mesh(devices: int):
  return dssn_jax.make_mesh(jax.devices()[:devices])


def _dssn_cases(apply_fn, x, v, reference):
  """(devices, batch, chunk): every device count with both batch sizes (the
  batch split and, for 1 input, the split over noise samples), and chunk
  sizes 1, 7 and L on several meshes. Yields (case, counts equal)."""
  cases = [(d, b, 7) for d in (1, 2, 8) for b in (1, 13)]
  cases += [(8, 13, 1), (8, 1, SPEC.levels)]
  for devices, batch, chunk in cases:
    counts = dssn_jax.dssn_counts(
        apply_fn, x[:batch], v, SPEC, chunk_size=chunk, mesh=_mesh(devices)
    )
    same = np.array_equal(np.asarray(counts), reference[:batch])
    yield ("dssn", devices, batch, chunk), same


def _sampling_cases(apply_fn, x, key, sampled):
  """Uniform-noise counts with the batch split and with the samples split."""
  for devices, batch in ((2, 13), (8, 1)):
    counts = dssn_jax.sample_counts(
        apply_fn,
        x[:batch],
        SPEC,
        key,
        noise="uniform",
        num_samples=200,
        chunk_size=9,
        mesh=_mesh(devices),
    )
    same = np.array_equal(np.asarray(counts), sampled[:batch])
    yield ("uniform", devices, batch), same


def _invalid_row_cases(apply_fn, x, v, reference):
  """Under jit, an invalid row (NaN) gets no certificate on every mesh, both
  when the batch is split and when the noise samples are."""
  x_bad = x.at[3].set(jnp.nan)
  for devices, batch in ((8, 13), (2, 13), (8, 4)):
    mesh = _mesh(devices)
    counts = jax.jit(
        lambda x, mesh=mesh: dssn_jax.dssn_counts(
            apply_fn, x, v, SPEC, chunk_size=7, mesh=mesh
        )
    )(x_bad[:batch])
    expected = reference[:batch].copy()
    expected[3] = -1
    yield ("dssn_nan_jit", devices, batch), np.array_equal(counts, expected)


def _lowered_first_cases(apply_fn, x, v, reference):
  """Compiled ahead from abstract inputs over a mesh (batch split, and noise
  samples split), the program a call then runs: the same counts, and the
  call compiles nothing."""
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **kw: compiles.append(event)
  )
  for devices, batch in ((8, 13), (8, 1)):
    mesh = _mesh(devices)
    abstract = jax.ShapeDtypeStruct((batch,) + SHAPE, x.dtype)
    dssn.lower_counts(apply_fn, abstract, v, SPEC, mesh=mesh).compile()
    before = sum("backend_compile" in e for e in compiles)
    counts = dssn_jax.dssn_counts(apply_fn, x[:batch], v, SPEC, mesh=mesh)
    same = np.array_equal(np.asarray(counts), reference[:batch])
    compiled = sum("backend_compile" in e for e in compiles) != before
    yield ("dssn_lowered_first", devices, batch), same and not compiled


def _abstract_sharding_case(apply_fn, v):
  """An abstract batch may carry the sharding the program runs it with (split
  over the mesh when the batch divides), and no other."""
  mesh = _mesh(8)
  split = jax.ShapeDtypeStruct(
      (8,) + SHAPE, jnp.float32, sharding=NamedSharding(mesh, P("data"))
  )
  lowered = dssn.lower_counts(apply_fn, split, v, SPEC, mesh=mesh)
  accepted = lowered.out_info.shape == (8, 5)
  replicated = jax.ShapeDtypeStruct(
      (8,) + SHAPE, jnp.float32, sharding=NamedSharding(mesh, P())
  )
  try:
    dssn.lower_counts(apply_fn, replicated, v, SPEC, mesh=mesh)
    refused = False
  except ValueError as e:
    refused = "runs it with" in str(e)
  yield ("abstract_sharding",), accepted and refused


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  apply_fn = _classifier()
  v = dssn_jax.make_offsets(0, SHAPE, SPEC.levels)
  x = jnp.round(jax.random.uniform(jax.random.key(2), (13,) + SHAPE) * 255)
  x = x / 255
  reference = np.asarray(dssn_jax.dssn_counts(apply_fn, x, v, SPEC))
  key = jax.random.key(3)
  sampled = np.asarray(
      dssn_jax.sample_counts(
          apply_fn, x, SPEC, key, noise="uniform", num_samples=200
      )
  )
  results = [
      *_dssn_cases(apply_fn, x, v, reference),
      *_sampling_cases(apply_fn, x, key, sampled),
      *_invalid_row_cases(apply_fn, x, v, reference),
      *_lowered_first_cases(apply_fn, x, v, reference),
      *_abstract_sharding_case(apply_fn, v),
  ]
  print(
      json.dumps(
          {
              "checked": len(results),
              "mismatches": [case for case, same in results if not same],
              "row_sums": sorted(set(reference.sum(1).tolist())),
          }
      )
  )


if __name__ == "__main__":
  main()
