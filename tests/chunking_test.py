"""Chunk sizing (dssn_jax/core/chunking.py) and the properties it relies on: the
vote program's memory does not grow with L, and counts do not depend on the
chunk size."""

import jax
import jax.numpy as jnp
import numpy as np

import dssn_jax
from dssn_jax.core import chunking
from dssn_jax.core import dssn
from dssn_jax.core import inputs


def _mlp(width=64, classes=5):
  """apply_fn(params, x) of a 2-layer MLP on (4, 4, 3) inputs, and params."""
  params = (
      jax.random.normal(jax.random.key(0), (48, width)),
      jax.random.normal(jax.random.key(1), (width, classes)),
  )

  def apply_fn(params, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ params[0]) @ params[1]

  return apply_fn, params


def test_default_forward_batch_depends_on_the_backend():
  cpu = type("Device", (), {"platform": "cpu"})()
  gpu = type("Device", (), {"platform": "gpu"})()
  mib = 2**20
  assert chunking.default_forward_batch(gpu, 20 * mib) == 512
  assert chunking.default_forward_batch(cpu, None) == 512
  # Small activations: the cap; WRN-40-2's ~20 MiB: ~50; huge: the floor.
  assert chunking.default_forward_batch(cpu, 1.2 * mib) == 512
  assert chunking.default_forward_batch(cpu, 20.4 * mib) == 50
  assert chunking.default_forward_batch(cpu, 300 * mib) == (
      chunking.CPU_MIN_FORWARD_BATCH
  )


def test_auto_chunk_size_follows_the_memory_budget():
  apply_fn, params = _mlp()
  shape = (4, 4, 3)
  facts = inputs.check_classifier(apply_fn, params, shape)
  per_input = facts.intermediate_bytes + 4 * 48
  forward = chunking.default_forward_batch(  # These tests run on a CPU.
      bytes_per_input=per_input
  )
  unlimited = chunking.auto_chunk_size(
      apply_fn, params, shape, 4, 1000, memory_budget=None
  )
  assert unlimited == chunking.default_chunk_size(4, 1000, forward)
  # A budget for ~8 noisy inputs (the bound from the jaxpr is larger than
  # the activations, so the chunk only gets smaller).
  small = chunking.auto_chunk_size(
      apply_fn, params, shape, 4, 1000, memory_budget=8 * per_input
  )
  assert 1 <= small < unlimited
  assert (
      chunking.auto_chunk_size(
          apply_fn, params, shape, 4, 1000, memory_budget=1
      )
      == 1
  )
  # Over a mesh: each device's share of the batch, or of the samples.
  assert chunking.auto_chunk_size(
      apply_fn, params, shape, 8, 1000, devices=4, memory_budget=None
  ) == chunking.default_chunk_size(2, 1000, forward)
  assert chunking.auto_chunk_size(
      apply_fn, params, shape, 1, 1000, devices=4, memory_budget=None
  ) == chunking.default_chunk_size(1, 250, forward)


def test_counts_do_not_depend_on_the_chunk_sizing():
  apply_fn, params = _mlp()
  spec = dssn_jax.SmoothingSpec(0.12)  # L = 106.
  v = dssn_jax.make_offsets(0, (4, 4, 3), spec.levels)
  x = np.round(np.random.RandomState(0).uniform(size=(3, 4, 4, 3)) * 255)
  x = (x / 255).astype(np.float32)
  auto = np.asarray(dssn_jax.dssn_counts(apply_fn, x, v, spec, params=params))
  for chunk in (1, 5, spec.levels):  # 5: a padded last chunk.
    counts = dssn_jax.dssn_counts(
        apply_fn, x, v, spec, params=params, chunk_size=chunk
    )
    np.testing.assert_array_equal(np.asarray(counts), auto)
  assert set(auto.sum(axis=1).tolist()) == {spec.levels}


def test_memory_of_the_vote_program_does_not_depend_on_levels():
  apply_fn, params = _mlp(width=256)
  x = jnp.zeros((4, 4, 4, 3))
  peaks = []
  for sigma in (0.5, 3.5):
    spec = dssn_jax.SmoothingSpec(sigma)
    v = dssn_jax.make_offsets(0, (4, 4, 3), spec.levels)
    lowered = dssn.lower_counts(
        apply_fn, x, v, spec, params=params, chunk_size=32
    )
    compiled = lowered.compile()
    peaks.append(compiled.memory_analysis().temp_size_in_bytes)
  # Up to the scan's few bytes of bookkeeping (its index vector is L/chunk
  # long: 97 int32 at sigma 3.5): no buffer scales with L.
  bookkeeping = 8 * -(-dssn_jax.SmoothingSpec(3.5).levels // 32)
  assert abs(peaks[0] - peaks[1]) <= bookkeeping + 0.01 * max(peaks)
