"""Tests of the smoothing spec, offsets and noise kernels (docs/design.md,
sec. 1)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dssn_jax
from dssn_jax.core import smoothing


def sigma_for_levels(levels, q):
  """The sigma whose 2 * lambda * q is exactly `levels` (up to float error)."""
  return levels / (2 * math.sqrt(3) * q)


def canonical(xt, q):
  """The kernel's float32 for exact values xt: float32(4q xt) *
  float32(1/4q)."""
  return np.float32(np.round(np.asarray(xt) * 4 * q)) * np.float32(1 / (4 * q))


def reference_dssn(x, s, width):
  """The design.md formula in float64 numpy, for any split width (L/q or
  2lam)."""
  t = np.ceil((x - s) / width) * width + s
  return (np.minimum(t, 1) + np.maximum(t - width, 0)) / 2


# ---------------------------------------------------------------------------
# SmoothingSpec.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigma, levels",
    [(0.12, 106), (0.25, 220), (0.5, 441), (1.0, 883), (3.5, 3091)],
)
def test_spec_levels(sigma, levels):
  spec = dssn_jax.SmoothingSpec(sigma=sigma, q=255)
  assert spec.lam == pytest.approx(sigma * math.sqrt(3))
  assert spec.levels == levels == math.floor(2 * sigma * math.sqrt(3) * 255)


def test_spec_levels_exact_multiple_despite_float_error():
  for levels in (1, 2, 5, 88, 255, 510):
    spec = dssn_jax.SmoothingSpec(sigma_for_levels(levels, 255))
    assert spec.levels == levels


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sigma=0.001), "too small"),
        (dict(sigma=0.0), "positive"),
        (dict(sigma=-1.0), "positive"),
        (dict(sigma=float("nan")), "finite"),
        (dict(sigma=float("inf")), "finite"),
        (dict(sigma=0.5, q=0), "positive integer"),
        (dict(sigma=0.5, q=2.5), "positive integer"),
    ],
)
def test_spec_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    dssn_jax.SmoothingSpec(**kwargs)


# ---------------------------------------------------------------------------
# Offsets.
# ---------------------------------------------------------------------------


def test_offsets_jax_layout():
  v = dssn_jax.make_offsets(3, (8, 8, 3), 441)
  assert v.shape == (8, 8, 3) and v.dtype == jnp.int32
  assert 0 <= int(v.min()) and int(v.max()) < 441
  np.testing.assert_array_equal(v, dssn_jax.make_offsets(3, (8, 8, 3), 441))
  assert not np.array_equal(v, dssn_jax.make_offsets(4, (8, 8, 3), 441))


def test_offsets_torch_layout_matches_authors_template():
  levels, shape = 441, (4, 5, 3)
  v = dssn_jax.make_offsets(0, shape, levels, layout="torch")
  # The authors' PyTorch code draws a (C, H, W) template from RandomState.
  chw = np.random.RandomState(0).randint(levels, size=(3 * 4 * 5,))
  chw = chw.reshape(3, 4, 5)
  for c in range(3):
    np.testing.assert_array_equal(np.asarray(v)[:, :, c], chw[c])
  flat = dssn_jax.make_offsets(7, (10,), levels, layout="torch")
  np.testing.assert_array_equal(
      flat, np.random.RandomState(7).randint(levels, size=10)
  )


def test_offsets_errors():
  with pytest.raises(ValueError, match="layout"):
    dssn_jax.make_offsets(0, (2, 2), 5, layout="pytorch")
  with pytest.raises(ValueError, match="levels"):
    dssn_jax.make_offsets(0, (2, 2), 0)


def test_offsets_fingerprint():
  v = dssn_jax.make_offsets(0, (4, 4, 1), 100)
  assert dssn_jax.offsets_fingerprint(v) == dssn_jax.offsets_fingerprint(
      np.asarray(v)
  )
  assert dssn_jax.offsets_fingerprint(v) != dssn_jax.offsets_fingerprint(
      dssn_jax.make_offsets(1, (4, 4, 1), 100)
  )
  assert dssn_jax.offsets_fingerprint(v) != dssn_jax.offsets_fingerprint(
      np.asarray(v).reshape(16)
  )


# ---------------------------------------------------------------------------
# The DSSN kernel.
# ---------------------------------------------------------------------------

GRID4 = jnp.array([0, 0.25, 0.5, 0.75, 1.0], jnp.float32)


@pytest.mark.parametrize(
    "k, expected",
    [
        # q = 4, L = 2 (lambda = 1/4 < 1/2). s = 1/8: cuts at 1/8 and 5/8.
        (0, [0.0625, 0.375, 0.375, 0.8125, 0.8125]),
        # s = 3/8: cuts at 3/8 and 7/8.
        (1, [0.1875, 0.1875, 0.625, 0.625, 0.9375]),
    ],
)
def test_dssn_hand_computed_small_lambda(k, expected):
  spec = dssn_jax.SmoothingSpec(sigma_for_levels(2, 4), q=4)
  assert spec.levels == 2 and spec.lam < 0.5
  v = jnp.zeros(5, jnp.int32)
  np.testing.assert_array_equal(
      dssn_jax.dssn_noise(GRID4, v, k, spec), expected
  )


@pytest.mark.parametrize(
    "k, expected",
    [
        # q = 4, L = 5 (lambda = 5/8 >= 1/2): xt = (min(s, 1) + [x > s]) / 2.
        (0, [0.0625, 0.5625, 0.5625, 0.5625, 0.5625]),  # s = 1/8
        (2, [0.3125, 0.3125, 0.3125, 0.8125, 0.8125]),  # s = 5/8
        (4, [0.5, 0.5, 0.5, 0.5, 0.5]),  # s = 9/8 > 1: one interval
    ],
)
def test_dssn_hand_computed_large_lambda(k, expected):
  spec = dssn_jax.SmoothingSpec(sigma_for_levels(5, 4), q=4)
  assert spec.levels == 5 and spec.lam >= 0.5
  v = jnp.zeros(5, jnp.int32)
  np.testing.assert_array_equal(
      dssn_jax.dssn_noise(GRID4, v, k, spec), expected
  )


def test_dssn_hand_computed_q255():
  # sigma = 0.1: L = floor(88.33) = 88, cuts at (0.5 + 88 n) / 255 for k = 0.
  spec = dssn_jax.SmoothingSpec(0.1)
  assert spec.levels == 88
  x = jnp.array([0, 100, 255], jnp.float32) / 255
  xt = dssn_jax.dssn_noise(x, jnp.zeros(3, jnp.int32), 0, spec)
  expected = np.array([0.25, 132.5, 215.75]) / 255
  np.testing.assert_array_equal(xt, canonical(expected, 255))
  np.testing.assert_allclose(xt, expected, rtol=1.2e-7)


@pytest.mark.parametrize("sigma", [0.02, 0.12, 0.25, 0.5, 1.0, 3.5])
def test_dssn_matches_float64_formula(sigma):
  spec = dssn_jax.SmoothingSpec(sigma)
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, size=4000)
  a[:2], a[2:4] = 0, 255  # Both ends of [0, 1].
  v = rng.integers(0, spec.levels, size=4000)
  k = rng.integers(0, spec.levels, size=4000)
  x = (a / 255).astype(np.float32)
  xt = dssn_jax.dssn_noise(
      jnp.asarray(x), jnp.asarray(v, jnp.int32), jnp.asarray(k, jnp.int32), spec
  )
  s = ((v + k) % spec.levels + 0.5) / 255
  expected = reference_dssn(a / 255, s, spec.levels / 255)
  np.testing.assert_allclose(np.asarray(xt), expected, rtol=1.2e-7, atol=0)
  np.testing.assert_array_equal(np.asarray(xt), canonical(expected, 255))


@pytest.mark.parametrize("sigma", [0.3, 0.5, 2.0])
def test_dssn_reduces_to_threshold_form_when_levels_at_least_q(sigma):
  spec = dssn_jax.SmoothingSpec(sigma)
  assert spec.levels >= spec.q
  x = jnp.arange(256, dtype=jnp.float32) / 255
  v = jnp.asarray(
      np.random.default_rng(1).integers(0, spec.levels, 256), jnp.int32
  )
  for k in (0, 1, spec.levels // 2, spec.levels - 1):
    s = np.asarray(dssn_jax.split_values(v, k, spec), np.float64)
    expected = (np.minimum(s, 1) + (np.arange(256) / 255 > s)) / 2
    np.testing.assert_array_equal(
        dssn_jax.dssn_noise(x, v, k, spec), canonical(expected, spec.q)
    )


@pytest.mark.parametrize("sigma", [0.05, 0.25, 1.0])
def test_dssn_output_is_quarter_step_integer(sigma):
  spec = dssn_jax.SmoothingSpec(sigma)
  x = jnp.arange(256, dtype=jnp.float32) / 255
  v = dssn_jax.make_offsets(0, (256,), spec.levels)
  xt = jax.vmap(lambda k: dssn_jax.dssn_noise(x, v, k, spec))(
      jnp.arange(spec.levels)
  )
  scaled = np.asarray(xt, np.float64) * 4 * 255
  np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-3)
  assert float(xt.min()) >= 0 and float(xt.max()) <= 1


@pytest.mark.parametrize("sigma", [0.05, 0.5])
def test_split_values_uniform_over_half_steps(sigma):
  """As k runs over 0..L-1 each s_i takes each of its L half-steps once."""
  spec = dssn_jax.SmoothingSpec(sigma)
  v = dssn_jax.make_offsets(0, (6, 6, 3), spec.levels)
  s = jax.vmap(lambda k: dssn_jax.split_values(v, k, spec))(
      jnp.arange(spec.levels)
  )  # (L, 6, 6, 3)
  half_steps = (np.arange(spec.levels) + 0.5) / spec.q
  sorted_s = np.sort(np.asarray(s, np.float64).reshape(spec.levels, -1), 0)
  np.testing.assert_allclose(
      sorted_s, half_steps[:, None] + 0 * sorted_s, rtol=1e-6
  )


def test_dssn_kernel_is_jittable_and_vmappable_over_k():
  spec = dssn_jax.SmoothingSpec(0.25)
  x = jnp.full((3, 2, 2, 1), 0.5)
  v = dssn_jax.make_offsets(0, (2, 2, 1), spec.levels)
  ks = jnp.arange(5)
  batched = jax.jit(jax.vmap(lambda k: dssn_jax.dssn_noise(x, v, k, spec)))(ks)
  assert batched.shape == (5, 3, 2, 2, 1)
  for k in range(5):
    np.testing.assert_array_equal(
        batched[k], dssn_jax.dssn_noise(x, v, k, spec)
    )


def test_random_dssn_noise_is_one_of_the_samples():
  spec = dssn_jax.SmoothingSpec(0.12)
  v = dssn_jax.make_offsets(0, (3, 3, 1), spec.levels)
  x = jnp.round(jax.random.uniform(jax.random.key(0), (16, 3, 3, 1)) * 255)
  x = x / 255
  noisy = jax.jit(lambda key: dssn_jax.random_dssn_noise(key, x, v, spec))(
      jax.random.key(1)
  )
  all_samples = jax.vmap(lambda k: dssn_jax.dssn_noise(x, v, k, spec))(
      jnp.arange(spec.levels)
  )  # (L, 16, 3, 3, 1)
  matches = jnp.all(all_samples == noisy[None], axis=(2, 3, 4))  # (L, 16)
  assert bool(jnp.all(jnp.any(matches, axis=0)))


# ---------------------------------------------------------------------------
# Randomized noise.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_ssn_noise_matches_formula_with_same_splits(sigma):
  spec = dssn_jax.SmoothingSpec(sigma)
  key = jax.random.key(5)
  x = jnp.asarray(
      np.random.default_rng(0).integers(0, 256, (500,)) / 255, jnp.float32
  )
  noisy = dssn_jax.ssn_noise(key, x, spec)
  s = jax.random.uniform(key, x.shape, jnp.float32, 0.0, 2 * spec.lam)
  expected = reference_dssn(
      np.asarray(x, np.float64),
      np.asarray(s, np.float64),
      np.float32(2 * spec.lam),
  )
  np.testing.assert_allclose(noisy, expected, atol=1e-6)
  assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1


def test_uniform_noise_range_and_mean():
  spec = dssn_jax.SmoothingSpec(0.5)
  x = jnp.full((20000,), 0.3)
  noisy = dssn_jax.uniform_noise(jax.random.key(0), x, spec)
  assert float(jnp.max(jnp.abs(noisy - x))) <= spec.lam
  assert float(jnp.mean(noisy)) == pytest.approx(0.3, abs=0.02)
  assert float(jnp.std(noisy)) == pytest.approx(0.5, abs=0.02)


def test_random_noise_dispatch_and_errors():
  spec = dssn_jax.SmoothingSpec(0.5)
  x = jnp.full((2, 3), 0.5)
  key = jax.random.key(0)
  np.testing.assert_array_equal(smoothing.random_noise("none", key, x, spec), x)
  with pytest.raises(ValueError, match="offsets"):
    smoothing.random_noise("dssn", key, x, spec)
  with pytest.raises(ValueError, match="Unknown noise kind"):
    smoothing.random_noise("gaussian", key, x, spec)
