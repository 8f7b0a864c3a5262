"""No certificate for invalid input, eagerly or traced (under jit and vmap).

Eager calls raise a ValueError; traced calls cannot see values, so the program
itself gives an invalid row counts of -1, on which `certify_from_counts`
abstains (pred -1, steps 0). Each case of the table in issue 13 is a test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dssn_jax
from dssn_jax.core import inputs
from dssn_jax.core import smoothing

SHAPE = (4, 4, 1)
NUM_CLASSES = 3
SPEC = dssn_jax.SmoothingSpec(0.12)  # L = 106.


def make_classifier(seed=0):
  w = jax.random.normal(
      jax.random.key(seed), (int(np.prod(SHAPE)), NUM_CLASSES)
  )
  return lambda x: (x.reshape(x.shape[0], -1) - 0.5) @ w


APPLY_FN = make_classifier()
OFFSETS = dssn_jax.make_offsets(0, SHAPE, SPEC.levels)


def grid_batch(batch, seed=1):
  steps = np.random.RandomState(seed).randint(0, 256, (batch,) + SHAPE)
  return (steps / 255).astype(np.float32)


def jit_certificate(x, v=OFFSETS, spec=SPEC):
  """(counts, pred, steps) of one jitted call: x and v are traced."""

  @jax.jit
  def run(x, v):
    counts = dssn_jax.dssn_counts(APPLY_FN, x, v, spec)
    pred, steps, _ = dssn_jax.certify_from_counts(counts, spec)
    return counts, pred, steps

  return jax.tree.map(np.asarray, run(x, v))


def assert_no_certificate(counts, pred, steps, rows):
  np.testing.assert_array_equal(counts[rows], -1)
  np.testing.assert_array_equal(pred[rows], -1)
  np.testing.assert_array_equal(steps[rows], 0)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_jit_non_finite_batch_abstains(value):
  x = np.full((2,) + SHAPE, value, np.float32)
  assert_no_certificate(*jit_certificate(x), rows=[0, 1])
  with pytest.raises(ValueError):
    dssn_jax.dssn_counts(APPLY_FN, x, OFFSETS, SPEC)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda x: x * 3,
        lambda x: x - 2,
        lambda x: x + np.float32(0.5 / 255),  # Half a step off the grid.
        lambda x: x + np.float32(1e-4 / 255),  # Far below the old 1e-3 steps.
    ],
    ids=["times3", "minus2", "half_step", "1e-4_step"],
)
def test_jit_off_grid_or_out_of_range_abstains(mutate):
  x = mutate(grid_batch(3))
  counts, pred, steps = jit_certificate(x)
  assert_no_certificate(counts, pred, steps, rows=[0, 1, 2])
  with pytest.raises(ValueError):
    dssn_jax.dssn_counts(APPLY_FN, x, OFFSETS, SPEC)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_coarse_dtypes_refused_eagerly_and_under_jit(dtype):
  x = jnp.asarray(grid_batch(2)).astype(dtype)
  with pytest.raises(ValueError, match="too coarse for the 1/255 grid"):
    dssn_jax.dssn_counts(APPLY_FN, x, OFFSETS, SPEC)
  with pytest.raises(ValueError, match="too coarse for the 1/255 grid"):
    jit_certificate(x)


def test_vmap_over_nan_batch_abstains():
  x = np.stack([grid_batch(2), np.full((2,) + SHAPE, np.nan, np.float32)])
  counts = np.asarray(
      jax.vmap(lambda x: dssn_jax.dssn_counts(APPLY_FN, x, OFFSETS, SPEC))(x)
  )
  np.testing.assert_array_equal(counts[1], -1)
  np.testing.assert_array_equal(
      counts[0], dssn_jax.dssn_counts(APPLY_FN, x[0], OFFSETS, SPEC)
  )


def test_traced_offsets_of_another_sigma_abstain():
  other = dssn_jax.make_offsets(0, SHAPE, dssn_jax.SmoothingSpec(0.5).levels)
  assert int(other.max()) >= SPEC.levels  # L = 441 offsets, used at L = 106.
  counts, pred, steps = jit_certificate(grid_batch(2), v=other)
  assert_no_certificate(counts, pred, steps, rows=[0, 1])
  huge = OFFSETS + (2**31 - SPEC.levels)  # Near int32 overflow.
  counts, pred, steps = jit_certificate(grid_batch(2), v=huge)
  assert_no_certificate(counts, pred, steps, rows=[0, 1])


def test_split_index_has_no_overflow():
  """Every k gives another split, also for offsets near 2**31 under jit."""
  levels = SPEC.levels
  v = jnp.asarray([2**31 - 1, 2**31 - 3, 0, 5], jnp.int32)
  splits = jax.jit(jax.vmap(lambda k: smoothing.split_index(v, k, SPEC)))(
      jnp.arange(levels)
  )
  splits = np.asarray(splits)
  for column, offset in zip(splits.T, [2**31 - 1, 2**31 - 3, 0, 5]):
    np.testing.assert_array_equal(column, (offset + np.arange(levels)) % levels)


@pytest.mark.parametrize(
    "counts, message",
    [
        ([[500, -400, 6]], "non-negative"),
        ([[100, 3, 0]], "sum to L = 106"),
        ([[60, 60, 0]], "sum to L = 106"),
    ],
)
def test_certify_from_counts_validates(counts, message):
  counts = np.asarray(counts, np.int32)
  with pytest.raises(ValueError, match=message):
    dssn_jax.certify_from_counts(counts, SPEC)
  with pytest.raises(ValueError, match=message):
    dssn_jax.certify_from_counts(jnp.asarray(counts), SPEC)
  pred, steps, radius = jax.jit(dssn_jax.certify_from_counts, static_argnums=1)(
      jnp.asarray(counts), SPEC
  )
  assert int(pred[0]) == -1 and int(steps[0]) == 0 and float(radius[0]) == 0


def test_non_finite_logits_never_vote():
  nan_on_bright = lambda x: jnp.where(
      jnp.max(x.reshape(x.shape[0], -1), axis=1, keepdims=True) > 0.9,
      jnp.nan,
      APPLY_FN(x),
  )
  x = grid_batch(2)
  x[1] = 0.0  # Dark image: its noisy copies never exceed 0.9 at sigma 0.12.
  x[0, 0, 0, 0] = 1.0
  eager = np.asarray(dssn_jax.dssn_counts(nan_on_bright, x, OFFSETS, SPEC))
  np.testing.assert_array_equal(eager[0], -1)  # No vote, and no wait.
  with pytest.raises(ValueError, match="non-finite logits"):
    dssn_jax.certify_from_counts(eager, SPEC)

  @jax.jit
  def run(x):
    counts = dssn_jax.dssn_counts(nan_on_bright, x, OFFSETS, SPEC)
    return counts, dssn_jax.certify_from_counts(counts, SPEC)[0]

  counts, pred = run(x)
  np.testing.assert_array_equal(counts[0], -1)
  assert int(pred[0]) == -1
  np.testing.assert_array_equal(
      counts[1], dssn_jax.dssn_counts(APPLY_FN, x[1:], OFFSETS, SPEC)[0]
  )
  sampled = dssn_jax.sample_counts(
      nan_on_bright, x, SPEC, jax.random.key(0), noise="uniform", num_samples=16
  )
  np.testing.assert_array_equal(sampled[0], -1)
  with pytest.raises(ValueError, match="not finite"):
    dssn_jax.certify_randomized(
        nan_on_bright, x, SPEC, jax.random.key(0), noise="uniform", n0=8, n=16
    )


def test_batch_ignoring_classifier_gets_a_clear_error():
  one_row = lambda x: APPLY_FN(x[:1])  # (1, C) for any batch.
  with pytest.raises(ValueError, match="one row per input"):
    dssn_jax.dssn_counts(one_row, grid_batch(3), OFFSETS, SPEC)
  with pytest.raises(ValueError, match="one row per input"):
    jax.jit(lambda x: dssn_jax.dssn_counts(one_row, x, OFFSETS, SPEC))(
        grid_batch(3)
    )


def test_certify_randomized_under_jit_says_what_to_do():
  with pytest.raises(ValueError, match="cannot run under jax.jit"):
    jax.jit(
        lambda x: dssn_jax.certify_randomized(
            APPLY_FN, x, SPEC, jax.random.key(0), noise="uniform", n=10
        ).pred
    )(grid_batch(2))


def test_sample_counts_under_jit_masks_invalid_rows():
  x = grid_batch(3)
  x[2] = np.nan
  key = jax.random.key(0)
  counts = np.asarray(
      jax.jit(
          lambda x: dssn_jax.sample_counts(
              APPLY_FN, x, SPEC, key, noise="ssn", num_samples=32
          )
      )(x)
  )
  np.testing.assert_array_equal(counts[2], -1)
  np.testing.assert_array_equal(counts[:2].sum(1), 32)


# ---------------------------------------------------------------------------
# The grid tolerance follows the dtype.
# ---------------------------------------------------------------------------


def test_every_float32_value_of_a_16_bit_grid_is_accepted():
  q = 65535
  spec = dssn_jax.SmoothingSpec(0.001, q)
  a = np.arange(q + 1)
  correctly_rounded = (a / q).astype(np.float32)
  reciprocal = a.astype(np.float32) * np.float32(1 / q)  # XLA's a / q.
  assert (correctly_rounded != reciprocal).any()
  for values in (correctly_rounded, reciprocal):
    x = values.reshape(-1, 16, 16, 1)
    dssn_jax.check_inputs(x, (16, 16, 1), q=q)
    ok = jax.jit(lambda x: inputs.valid_rows(x, q))(x)
    assert bool(np.all(ok))
  del spec


@pytest.mark.parametrize("q", [255, 65535])
def test_a_few_ulps_off_the_grid_is_rejected(q):
  a = np.arange(1, q, max(1, q // 64))
  exact = (a / q).astype(np.float32)
  off = exact
  for _ in range(5):  # Five ulps away from the rounded grid value.
    off = np.nextafter(off, np.float32(2))
  x = off.reshape(-1, 1, 1, 1)
  with pytest.raises(ValueError, match="off the 1/"):
    dssn_jax.check_inputs(x, (1, 1, 1), q=q)
  ok = np.asarray(jax.jit(lambda x: inputs.valid_rows(x, q))(x))
  assert not ok.any()


# ---------------------------------------------------------------------------
# The property: mixed batches, jitted and vmapped.
# ---------------------------------------------------------------------------


def set_one_pixel(value):
  """A corruption that sets one random pixel of the row to value."""

  def corrupt(row, rng):
    row = row.copy()
    row.flat[rng.randint(row.size)] = value
    return row

  return corrupt


CORRUPTIONS = [
    lambda row, rng: np.full_like(row, np.nan),
    set_one_pixel(np.inf),
    set_one_pixel(np.nan),
    set_one_pixel(1.5),
    set_one_pixel(-1 / 255),
    set_one_pixel(0.5),  # Off the 1/255 grid (127.5 steps).
    lambda row, rng: row * 3 + 1 / 255,  # Some values above 1.
    lambda row, rng: row - 2,
    lambda row, rng: row + np.float32((rng.rand() + 0.01) / 255 / 2),
]


@pytest.mark.parametrize("seed", range(6))
def test_property_mixed_batches_jit_and_vmap(seed):
  rng = np.random.RandomState(seed)
  batch = 8
  x = grid_batch(batch, seed=seed + 10)
  invalid = rng.rand(batch) < 0.5
  invalid[rng.randint(batch)] = True
  for i in np.flatnonzero(invalid):
    x[i] = CORRUPTIONS[rng.randint(len(CORRUPTIONS))](x[i], rng).astype(
        np.float32
    )
  valid = np.flatnonzero(~invalid)
  eager_counts = np.asarray(
      dssn_jax.dssn_counts(APPLY_FN, x[valid], OFFSETS, SPEC)
  )
  eager_pred, eager_steps, _ = dssn_jax.certify_from_counts(eager_counts, SPEC)
  counts, pred, steps = jit_certificate(x)
  assert_no_certificate(counts, pred, steps, rows=np.flatnonzero(invalid))
  np.testing.assert_array_equal(counts[valid], eager_counts)
  np.testing.assert_array_equal(pred[valid], eager_pred)
  np.testing.assert_array_equal(steps[valid], eager_steps)

  def one(row):
    counts = dssn_jax.dssn_counts(APPLY_FN, row[None], OFFSETS, SPEC)
    return dssn_jax.certify_from_counts(counts, SPEC)[:2]

  vmapped_pred, vmapped_steps = jax.vmap(one)(x)
  np.testing.assert_array_equal(np.asarray(vmapped_pred)[:, 0], pred)
  np.testing.assert_array_equal(np.asarray(vmapped_steps)[:, 0], steps)
