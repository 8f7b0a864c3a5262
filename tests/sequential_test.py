"""Sequential certification (core/sequential.py, core/randomized_decide.py)
and packed counts (core/packing.py).

The confidence sequence by simulation (Bernoulli streams of known p: the
miscoverage over all looks, and the error of certificates claimed at a
data-dependent stop, at most alpha), its integer tests against the
Clopper-Pearson bounds, and the packed counts against `dssn_counts` and
`sample_counts` on the same rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dssn_jax
from dssn_jax.core import clopper_pearson
from dssn_jax.core import dssn
from dssn_jax.core import dssn_decide
from dssn_jax.core import packing
from dssn_jax.core import randomized
from dssn_jax.core import randomized_decide
from dssn_jax.core import sequential


def _streams(p, streams, schedule, rng):
  """(streams, J) successes at each look of Bernoulli(p) streams."""
  steps = np.diff(np.r_[0, schedule])
  return np.cumsum(rng.binomial(steps[None, :], p, (streams, steps.size)), 1)


@pytest.mark.parametrize("p", [0.3, 0.5, 0.62, 0.8, 0.97, 0.999])
def test_confidence_sequence_miscoverage_at_most_alpha(p):
  alpha, schedule = 0.05, sequential.looks(10, 5000)
  level = alpha / len(schedule)
  rng = np.random.default_rng(int(p * 1000))
  k = _streams(p, 40_000, schedule, rng)
  lower = sequential.cp_lower(k, schedule[None], level)
  upper = sequential.cp_upper(k, schedule[None], level)
  missed = ((lower > p) | (upper < p)).any(axis=1)
  assert missed.mean() <= alpha
  # Each look alone is a Clopper-Pearson interval at alpha / J (so without
  # the split the sequence would miss far more often than a single look).
  np.testing.assert_allclose(
      lower[:, -1], clopper_pearson.clopper_pearson_lower(k[:, -1], 5000, level)
  )


def test_certificates_at_the_stopping_look_fail_at_most_alpha():
  """Stop each stream at its first decided look; among streams whose p is
  below what radius r needs, at most alpha claim r."""
  alpha, lam = 0.05, 1.0
  radii = np.array([0.0, 0.3, 0.6])
  plan = sequential.plan(radii, lam, alpha=alpha, n_max=4000, first_look=8)
  rng = np.random.default_rng(7)
  for p in (0.5, 0.6, 0.64, 0.8):
    k = _streams(p, 20_000, plan.looks, rng)
    stop = np.full(k.shape[0], len(plan.looks) - 1)
    claimed = np.zeros((k.shape[0], radii.size), bool)
    for j in range(len(plan.looks) - 1, -1, -1):
      v = sequential.decide(plan, np.full(k.shape[0], j), k[:, j])
      stop = np.where(v.decided, j, stop)
    at_stop = k[np.arange(k.shape[0]), stop]
    claimed = sequential.decide(plan, stop, at_stop).certified
    needs = 0.5 + radii / (2 * lam)
    for i, need in enumerate(needs):
      if p <= need:  # Any claim of radii[i] is an error.
        assert claimed[:, i].mean() <= alpha
    assert (stop < len(plan.looks) - 1).any()


def test_plan_thresholds_are_the_clopper_pearson_rule():
  lam = np.sqrt(3) * 0.5
  radii = [0.0, 0.25, 1.0]
  plan = sequential.plan(radii, lam, alpha=0.001, n_max=500, first_look=500)
  assert plan.looks.tolist() == [500] and plan.level == 0.001
  k = np.arange(501)
  lower = clopper_pearson.clopper_pearson_lower(k, 500, 0.001)
  for i, r in enumerate(radii):
    fixed = (lower > 0.5) & (2 * lam * (lower - 0.5) >= r)
    v = sequential.decide(plan, np.zeros(501, int), k)
    np.testing.assert_array_equal(v.certified[:, i], fixed)
    assert v.decided.all()  # The last look decides everything.
  plan = sequential.plan(radii, lam, alpha=0.001, n_max=1000, first_look=10)
  assert plan.looks.tolist() == [10, 20, 40, 80, 160, 320, 640, 1000]
  got = jax.jit(lambda look, k: sequential.decide(plan, look, k))(
      jnp.array([0, 3, 7]), jnp.array([10, 70, 400])
  )
  want = sequential.decide(plan, np.array([0, 3, 7]), np.array([10, 70, 400]))
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)


def _mlp(seed=0, scale=3.0):
  w1 = jax.random.normal(jax.random.key(seed), (36, 16)) * scale
  w2 = jax.random.normal(jax.random.key(seed + 1), (16, 4))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 1) @ w2


def _never(counts, used):
  return np.zeros(len(used), bool)


@pytest.mark.parametrize(
    "noise,slots,pool", [("uniform", 31, 2), ("ssn", 64, 7)]
)
def test_packed_counts_equal_sample_counts(noise, slots, pool):
  spec = dssn_jax.SmoothingSpec(0.5)
  apply_fn = _mlp()
  x = np.random.default_rng(0).random((7, 6, 6, 1), np.float32)
  rows, key = np.arange(40, 47), jax.random.key(3)
  select_key, count_key = randomized._split_key(key)  # pylint: disable=protected-access
  want = [
      np.asarray(
          randomized.sample_counts(
              apply_fn, x, spec, k, noise=noise, num_samples=m, row_ids=rows
          )
      )
      for k, m in ((select_key, 9), (count_key, 150))
  ]
  got = packing.run_packed(
      randomized_decide.packed_program(apply_fn, noise, spec),
      None,
      randomized_decide.keys_of(key),
      x,
      rows,
      packing.ItemLayout((0, 9), 159),
      _never,
      slots=slots,
      pool_size=pool,
  )
  np.testing.assert_array_equal(got.counts[:, 0], want[0])
  np.testing.assert_array_equal(got.counts[:, 1], want[1])
  assert (got.used == 159).all() and got.passes >= 7 * 159 / slots


def test_packed_counts_equal_dssn_counts():
  spec = dssn_jax.SmoothingSpec(0.25)
  apply_fn = _mlp(2)
  x = (np.random.default_rng(1).integers(0, 256, (5, 6, 6, 1)) / 255).astype(
      np.float32
  )
  v = dssn_jax.make_offsets(0, (6, 6, 1), spec.levels)
  want = np.asarray(dssn.dssn_counts(apply_fn, x, v, spec))
  got = packing.run_packed(
      packing.PackedProgram(apply_fn, dssn_decide._split_noise(spec), 1),  # pylint: disable=protected-access
      None,
      jnp.asarray(v),
      x,
      np.zeros(5, np.int32),
      packing.ItemLayout((0,), spec.levels),
      _never,
      slots=100,
      pool_size=2,
  )
  np.testing.assert_array_equal(got.counts[:, 0], want)


def test_sequential_with_one_look_is_the_fixed_n_certificate():
  spec = dssn_jax.SmoothingSpec(0.5)
  apply_fn = _mlp(4, 1.0)
  x = np.random.default_rng(2).random((8, 6, 6, 1), np.float32)
  rows, key, radii = np.arange(8) + 100, jax.random.key(9), [0.0, 0.2, 0.5]
  fixed = randomized.certify_randomized(
      apply_fn, x, spec, key, noise="uniform", n0=16, n=400, row_ids=rows
  )
  seq = randomized_decide.sequential_certify(
      apply_fn,
      x,
      spec,
      key,
      radii,
      noise="uniform",
      n0=16,
      n_max=400,
      first_look=400,
      row_ids=rows,
      slots=64,
  )
  np.testing.assert_array_equal(seq.pred, fixed.pred)
  np.testing.assert_array_equal(seq.count_top, fixed.count_top)
  np.testing.assert_array_equal(
      seq.certified, fixed.radius[:, None] >= np.asarray(radii)[None]
  )
  # With looks, each input's count is that of its first `samples` draws.
  seq = randomized_decide.sequential_certify(
      apply_fn,
      x,
      spec,
      key,
      radii,
      noise="uniform",
      n0=16,
      n_max=400,
      first_look=25,
      row_ids=rows,
      slots=64,
  )
  _, count_key = randomized._split_key(key)  # pylint: disable=protected-access
  top = np.asarray(fixed.pred)
  for m in np.unique(seq.samples):
    assert m in seq.plan.looks
    at_m = np.flatnonzero(seq.samples == m)
    counts = np.asarray(
        randomized.sample_counts(
            apply_fn,
            x[at_m],
            spec,
            count_key,
            noise="uniform",
            num_samples=int(m),
            row_ids=rows[at_m],
        )
    )
    for i, c in zip(at_m, counts):
      if top[i] >= 0:
        assert c[top[i]] == seq.count_top[i]
  assert seq.samples.min() < 400
