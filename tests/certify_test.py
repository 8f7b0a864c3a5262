"""Tests of the exact DSSN certifier and the randomized baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize
from scipy import stats

import dssn_jax
from dssn_jax.core import dssn
from dssn_jax.core import placement
from dssn_jax.core import randomized

SHAPE = (5, 5, 1)
NUM_CLASSES = 4


def random_grid(key, batch, shape=SHAPE, q=255):
  return jnp.round(jax.random.uniform(key, (batch,) + shape) * q) / q


def make_linear(seed=0, shape=SHAPE, num_classes=NUM_CLASSES):
  dim = int(np.prod(shape))
  w = jax.random.normal(jax.random.key(seed), (dim, num_classes))
  b = jax.random.normal(jax.random.key(seed + 1), (num_classes,))
  return lambda x: x.reshape(x.shape[0], -1) @ w + b


def make_mlp(seed=0, shape=SHAPE, num_classes=NUM_CLASSES, hidden=16):
  dim = int(np.prod(shape))
  k1, k2 = jax.random.split(jax.random.key(seed))
  w1 = jax.random.normal(k1, (dim, hidden)) * 2
  w2 = jax.random.normal(k2, (hidden, num_classes))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 1) @ w2


def make_cnn(seed=0, num_classes=NUM_CLASSES):
  k1, k2 = jax.random.split(jax.random.key(seed))
  kernel = jax.random.normal(k1, (3, 3, 1, 4))
  dense = jax.random.normal(k2, (4 * 3 * 3, num_classes))

  def apply(x):
    h = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(h - 1).reshape(x.shape[0], -1) @ dense

  return apply


CLASSIFIERS = {"linear": make_linear, "mlp": make_mlp, "cnn": make_cnn}


def naive_counts(apply_fn, x, v, spec):
  """Counts by the docs/design.md formulas, one sample at a time, in numpy."""
  x64 = np.asarray(x, np.float64)
  counts = np.zeros((x.shape[0], NUM_CLASSES), np.int64)
  width = spec.levels / spec.q
  for k in range(spec.levels):
    s = ((np.asarray(v) + k) % spec.levels + 0.5) / spec.q
    t = np.ceil((x64 - s) / width) * width + s
    xt = (np.minimum(t, 1) + np.maximum(t - width, 0)) / 2
    xt32 = np.float32(np.round(xt * 4 * spec.q)) * np.float32(1 / (4 * spec.q))
    votes = np.argmax(np.asarray(apply_fn(jnp.asarray(xt32))), axis=1)
    counts[np.arange(x.shape[0]), votes] += 1
  return counts


# ---------------------------------------------------------------------------
# Certificates from counts: the tie rule.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, pred, steps",
    [
        ([10, 3, 0], 0, 3),  # (10 - 3 - 0) // 2
        ([5, 5, 0], 0, 0),  # Tie: lowest index wins, runner-up has equal count.
        ([3, 5, 5], 1, 0),
        ([4, 6, 0], 1, 0),  # Runner-up has a lower index: (6 - 4 - 1) // 2.
        ([4, 9, 0], 1, 2),  # (9 - 4 - 1) // 2
        ([3, 9, 3], 1, 2),  # Stable sort: runner-up is class 0, lower index.
        ([0, 3, 9, 3], 2, 2),  # Runner-up class 1 (lower index than 2).
        ([7, 7, 7], 0, 0),  # All equal.
        ([0, 10], 1, 4),  # (10 - 0 - 1) // 2
        ([10, 0], 0, 5),
        ([0, 0, 441, 0], 2, 220),
    ],
)
def test_tie_rule(counts, pred, steps):
  spec = spec_with_levels(sum(counts))  # Counts must sum to L.
  counts = np.array([counts], np.int32)
  for array in (counts, jnp.asarray(counts)):
    got_pred, got_steps, radius = dssn_jax.certify_from_counts(array, spec)
    assert int(got_pred[0]) == pred and int(got_steps[0]) == steps
    assert float(radius[0]) == pytest.approx(steps / 255)
  _, _, radius = dssn_jax.certify_from_counts(counts, spec)
  assert radius.dtype == np.float64 and radius[0] == steps / 255


def spec_with_levels(levels, q=255):
  """The spec whose L is `levels` (sigma = L / (2 sqrt(3) q))."""
  spec = dssn_jax.SmoothingSpec(levels / (2 * np.sqrt(3) * q), q)
  assert spec.levels == levels
  return spec


def test_certify_from_counts_is_jittable():
  spec = spec_with_levels(15)
  counts = jnp.array([[3, 9, 3], [5, 5, 5]], jnp.int32)
  pred, steps, _ = jax.jit(dssn_jax.certify_from_counts, static_argnums=1)(
      counts, spec
  )
  np.testing.assert_array_equal(pred, [1, 0])
  np.testing.assert_array_equal(steps, [2, 0])


def test_certify_from_counts_errors():
  spec = dssn_jax.SmoothingSpec(0.5)
  with pytest.raises(ValueError, match="at least 2 classes"):
    dssn_jax.certify_from_counts(np.array([[5]]), spec)
  with pytest.raises(ValueError, match="shape"):
    dssn_jax.certify_from_counts(np.array([5, 3]), spec)
  with pytest.raises(ValueError, match="integers"):
    dssn_jax.certify_from_counts(np.array([[5.0, 3.0]]), spec)


# ---------------------------------------------------------------------------
# Exact counts.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_counts_match_naive_formula(name):
  spec = dssn_jax.SmoothingSpec(0.1)  # L = 88
  apply_fn = CLASSIFIERS[name]()
  v = dssn_jax.make_offsets(0, SHAPE, spec.levels)
  x = random_grid(jax.random.key(1), 3)
  counts = dssn_jax.dssn_counts(apply_fn, x, v, spec)
  assert counts.dtype == jnp.int32 and counts.shape == (3, NUM_CLASSES)
  np.testing.assert_array_equal(counts.sum(axis=1), spec.levels)
  np.testing.assert_array_equal(counts, naive_counts(apply_fn, x, v, spec))


def test_counts_identical_for_chunk_and_batch_sizes():
  spec = dssn_jax.SmoothingSpec(0.12)  # L = 106
  apply_fn = make_mlp()
  v = dssn_jax.make_offsets(3, SHAPE, spec.levels)
  x = random_grid(jax.random.key(4), 13)
  reference = dssn_jax.dssn_counts(apply_fn, x, v, spec)
  for chunk in (1, 7, spec.levels, 1000):
    np.testing.assert_array_equal(
        dssn_jax.dssn_counts(apply_fn, x, v, spec, chunk_size=chunk), reference
    )
  for i in range(13):
    np.testing.assert_array_equal(
        dssn_jax.dssn_counts(apply_fn, x[i : i + 1], v, spec, chunk_size=7),
        reference[i : i + 1],
    )


def test_counts_with_params_argument():
  spec = dssn_jax.SmoothingSpec(0.1)
  w = jax.random.normal(jax.random.key(0), (25, 3))
  apply_with_params = lambda params, x: x.reshape(x.shape[0], -1) @ params
  v = dssn_jax.make_offsets(0, SHAPE, spec.levels)
  x = random_grid(jax.random.key(1), 4)
  np.testing.assert_array_equal(
      dssn_jax.dssn_counts(apply_with_params, x, v, spec, params=w),
      dssn_jax.dssn_counts(lambda b: b.reshape(b.shape[0], -1) @ w, x, v, spec),
  )


def test_counts_inside_user_jit():
  spec = dssn_jax.SmoothingSpec(0.1)
  apply_fn = make_linear()
  v = dssn_jax.make_offsets(0, SHAPE, spec.levels)
  x = random_grid(jax.random.key(1), 2)

  @jax.jit
  def certified(x):
    counts = dssn_jax.dssn_counts(apply_fn, x, v, spec, chunk_size=11)
    return dssn_jax.certify_from_counts(counts, spec)

  pred, steps, _ = certified(x)
  ref_pred, ref_steps, _ = dssn_jax.certify_from_counts(
      np.asarray(dssn_jax.dssn_counts(apply_fn, x, v, spec)), spec
  )
  np.testing.assert_array_equal(pred, ref_pred)
  np.testing.assert_array_equal(steps, ref_steps)


def test_memory_bounded_by_one_chunk():
  """The compiled program's temporaries do not grow with L."""
  apply_fn = make_mlp()
  x = random_grid(jax.random.key(0), 8)

  def temp_bytes(sigma):
    spec = dssn_jax.SmoothingSpec(sigma)
    v = dssn_jax.make_offsets(0, SHAPE, spec.levels)
    lowered = dssn.lower_counts(apply_fn, x, v, spec, chunk_size=32)
    compiled = lowered.compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(0.5), temp_bytes(3.5)  # L = 441 vs 3091
  assert large <= 1.1 * small + 4096


# ---------------------------------------------------------------------------
# Soundness: grid perturbations inside the radius keep the prediction.
# ---------------------------------------------------------------------------


def perturb(rng, a, budget, direction=None):
  """Moves integer pixels a (in grid steps) by an l1 budget of grid steps.

  With a direction (same shape as a), spends the budget on the pixels with the
  largest |direction|, each as far as [0, q] allows, against the sign of the
  direction; otherwise on random pixels in random directions.
  """
  a = a.copy().ravel()
  q = 255
  if direction is None:
    for _ in range(budget):
      i = rng.integers(a.size)
      step = rng.choice([-1, 1])
      if not 0 <= a[i] + step <= q:
        step = -step
      a[i] += step
    return a
  direction = direction.ravel()
  for i in np.argsort(-np.abs(direction)):
    if budget == 0:
      break
    target = 0 if direction[i] > 0 else q
    move = min(budget, abs(target - a[i]))
    a[i] += move * np.sign(target - a[i]) if move else 0
    budget -= move
  return a


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize("sigma", [0.1, 0.6])
def test_soundness_perturbations_inside_radius(name, sigma):
  spec = dssn_jax.SmoothingSpec(sigma)
  apply_fn = CLASSIFIERS[name](seed=2)
  v = dssn_jax.make_offsets(5, SHAPE, spec.levels)
  rng = np.random.default_rng(0)
  x = random_grid(jax.random.key(7), 6)
  counts = np.asarray(dssn_jax.dssn_counts(apply_fn, x, v, spec))
  pred, steps, radius = dssn_jax.certify_from_counts(counts, spec)
  assert steps.max() > 0, "the test needs some nonzero certificates"
  margin_grad = jax.grad(
      lambda z, a, b: (apply_fn(z[None])[0, a] - apply_fn(z[None])[0, b])
  )
  perturbed, owners, budgets = [], [], []
  for i in range(x.shape[0]):
    a = np.round(np.asarray(x[i]) * 255).astype(np.int64)
    order = np.argsort(-counts[i], kind="stable")
    direction = np.asarray(margin_grad(x[i], order[0], order[1]))
    for budget in {int(steps[i]), max(int(steps[i]) - 1, 0)}:
      candidates = [perturb(rng, a, budget) for _ in range(3)]
      candidates.append(perturb(rng, a, budget, direction))
      for moved in candidates:
        assert np.abs(moved - a.ravel()).sum() <= steps[i]
        assert np.abs(moved - a.ravel()).sum() / 255 <= radius[i] + 1e-12
        perturbed.append(moved.reshape(SHAPE) / 255)
        owners.append(i)
        budgets.append(np.abs(moved - a.ravel()).sum())
  perturbed = jnp.asarray(np.stack(perturbed), jnp.float32)
  new_counts = np.asarray(dssn_jax.dssn_counts(apply_fn, perturbed, v, spec))
  new_pred, _, _ = dssn_jax.certify_from_counts(new_counts, spec)
  owners = np.array(owners)
  np.testing.assert_array_equal(new_pred, pred[owners])
  # One grid step changes at most one of the L samples.
  assert (
      np.abs(new_counts - counts[owners]).max(axis=1) <= np.array(budgets)
  ).all()


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_soundness_exhaustive_for_one_pixel_classifier(sigma):
  """Every grid value of the pixel a classifier reads, every move in radius."""
  spec = dssn_jax.SmoothingSpec(sigma)
  apply_fn = lambda z: jnp.stack(
      [z[:, 0, 0, 0] - 0.3, 0.3 - z[:, 0, 0, 0], 0 * z[:, 0, 0, 0]], axis=1
  )
  v = dssn_jax.make_offsets(0, SHAPE, spec.levels)
  x = jnp.zeros((256,) + SHAPE).at[:, 0, 0, 0].set(jnp.arange(256) / 255)
  counts = np.asarray(dssn_jax.dssn_counts(apply_fn, x, v, spec))
  pred, steps, _ = dssn_jax.certify_from_counts(counts, spec)
  assert steps.max() > 0
  for a in range(256):
    for b in range(max(0, a - steps[a]), min(255, a + steps[a]) + 1):
      assert pred[b] == pred[a], (a, b, steps[a])
    # Counts move by at most one vote per grid step.
    assert np.abs(counts - counts[a]).max(axis=1)[b] <= abs(b - a)


# ---------------------------------------------------------------------------
# Randomized certification.
# ---------------------------------------------------------------------------


def independent_cp_lower(k, n, alpha):
  """Solves P(X >= k | p) = alpha / 2 for p by root finding."""
  if k == 0:
    return 0.0
  return optimize.brentq(
      lambda p: stats.binom.sf(k - 1, n, p) - alpha / 2,
      1e-12,
      1 - 1e-12,
      xtol=1e-15,
  )


@pytest.mark.parametrize(
    "k, n",
    [(100000, 100000), (99000, 100000), (60, 100), (51, 100), (1, 10), (0, 10)],
)
def test_clopper_pearson_matches_independent_solution(k, n):
  got = float(dssn_jax.clopper_pearson_lower(k, n, 0.001))
  assert got == pytest.approx(independent_cp_lower(k, n, 0.001), abs=1e-9)


def test_clopper_pearson_all_successes_closed_form():
  # P(X >= n | p) = p^n = alpha / 2.
  assert float(dssn_jax.clopper_pearson_lower(100000, 100000, 0.001)) == (
      pytest.approx(0.0005 ** (1 / 100000), rel=1e-12)
  )


@pytest.mark.parametrize("noise", ["uniform", "ssn"])
def test_randomized_certify_confident_classifier(noise):
  spec = dssn_jax.SmoothingSpec(0.25)
  apply_fn = lambda z: jnp.tile(jnp.array([[0.0, 1.0, 0.0]]), (z.shape[0], 1))
  x = random_grid(jax.random.key(0), 3)
  cert = dssn_jax.certify_randomized(
      apply_fn, x, spec, jax.random.key(1), noise=noise, n0=16, n=5000
  )
  np.testing.assert_array_equal(cert.pred, 1)
  np.testing.assert_array_equal(cert.count_top, 5000)
  p_lower = independent_cp_lower(5000, 5000, 0.001)
  np.testing.assert_allclose(cert.p_lower, p_lower, rtol=1e-9)
  np.testing.assert_allclose(
      cert.radius, 2 * spec.lam * (p_lower - 0.5), rtol=1e-9
  )


def test_randomized_certify_abstains_at_coin_flip():
  spec = dssn_jax.SmoothingSpec(0.5)
  # Votes by the sign of the noise on one pixel at 0.5: a fair coin.
  apply_fn = lambda z: jnp.stack(
      [z[:, 0, 0, 0] - 0.5, 0.5 - z[:, 0, 0, 0]], axis=1
  )
  x = jnp.full((4,) + SHAPE, 128 / 255) - 0.5 / 255
  x = jnp.round(x * 255) / 255
  cert = dssn_jax.certify_randomized(
      apply_fn, x, spec, jax.random.key(0), noise="uniform", n0=64, n=2000
  )
  assert (cert.p_lower <= 0.5).all()
  np.testing.assert_array_equal(cert.pred, -1)
  assert (cert.radius <= 0).all()


def test_sample_counts_deterministic_over_chunks():
  spec = dssn_jax.SmoothingSpec(0.5)
  apply_fn = make_mlp()
  x = random_grid(jax.random.key(0), 5)
  key = jax.random.key(9)
  reference = dssn_jax.sample_counts(
      apply_fn, x, spec, key, noise="ssn", num_samples=300
  )
  np.testing.assert_array_equal(reference.sum(axis=1), 300)
  for chunk in (1, 7, 300):
    np.testing.assert_array_equal(
        dssn_jax.sample_counts(
            apply_fn,
            x,
            spec,
            key,
            noise="ssn",
            num_samples=300,
            chunk_size=chunk,
        ),
        reference,
    )


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


@pytest.fixture(name="setup")
def fixture_setup():
  spec = dssn_jax.SmoothingSpec(0.1)
  v = dssn_jax.make_offsets(0, SHAPE, spec.levels)
  return spec, v, make_linear(), random_grid(jax.random.key(0), 2)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x: x + 0.3 / 255, "only hold for quantized inputs"),
        (lambda x: x.at[0, 0, 0, 0].set(1.5), r"lie in \[0, 1\]"),
        (lambda x: x.at[0, 0, 0, 0].set(-1 / 255), r"lie in \[0, 1\]"),
        (lambda x: x.at[1, 2, 2, 0].set(jnp.nan), "NaN"),
        (lambda x: x[0], "shape"),
        (lambda x: x.reshape(2, 25, 1, 1), "shape"),
        (lambda x: x[:0], "empty"),
        (lambda x: (x * 255).astype(jnp.uint8), "floating point"),
    ],
)
def test_bad_inputs(setup, mutate, message):
  spec, v, apply_fn, x = setup
  with pytest.raises(ValueError, match=message):
    dssn_jax.dssn_counts(apply_fn, mutate(x), v, spec)


def test_bad_offsets_and_classifier(setup):
  spec, v, apply_fn, x = setup
  with pytest.raises(ValueError, match="another sigma"):
    dssn_jax.dssn_counts(apply_fn, x, v + spec.levels, spec)
  with pytest.raises(ValueError, match="integers"):
    dssn_jax.dssn_counts(apply_fn, x, v.astype(jnp.float32), spec)
  with pytest.raises(ValueError, match="at least 2 classes"):
    dssn_jax.dssn_counts(lambda z: apply_fn(z)[:, :1], x, v, spec)
  with pytest.raises(ValueError, match="logits"):
    dssn_jax.dssn_counts(lambda z: apply_fn(z)[:, 0], x, v, spec)
  with pytest.raises(ValueError, match="chunk_size"):
    dssn_jax.dssn_counts(apply_fn, x, v, spec, chunk_size=0)


def test_bad_randomized_arguments(setup):
  spec, _, apply_fn, x = setup
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="randomized noise"):
    dssn_jax.sample_counts(
        apply_fn, x, spec, key, noise="gaussian", num_samples=10
    )
  with pytest.raises(ValueError, match="num_samples"):
    dssn_jax.sample_counts(apply_fn, x, spec, key, noise="ssn", num_samples=0)
  with pytest.raises(ValueError, match="alpha"):
    dssn_jax.certify_randomized(apply_fn, x, spec, key, noise="ssn", alpha=1.5)
  with pytest.raises(ValueError, match="NaN"):
    dssn_jax.certify_randomized(
        apply_fn,
        x.at[0, 0, 0, 0].set(jnp.nan),
        spec,
        key,
        noise="uniform",
        n=10,
    )


def test_dssn_counts_compiles_once_per_apply_fn_and_shapes():
  """Repeated calls reuse the compiled program: apply_fn is traced again only
  for a new batch shape, never for new values of the same shapes."""
  w = jax.random.normal(jax.random.key(3), (64, 3))
  traces = []

  def apply_fn(batch):
    traces.append(batch.shape)  # Runs only while JAX traces apply_fn.
    return (batch.reshape(batch.shape[0], -1) - 0.5) @ w

  spec = dssn_jax.SmoothingSpec(0.12)
  v = dssn_jax.make_offsets(0, (8, 8, 1), spec.levels)
  grid = (
      lambda seed, n: jnp.round(
          jax.random.uniform(jax.random.key(seed), (n, 8, 8, 1)) * 255
      )
      / 255
  )
  first = dssn_jax.dssn_counts(apply_fn, grid(0, 4), v, spec)
  traced = len(traces)
  assert traced >= 1
  for seed in (1, 2, 3):
    counts = dssn_jax.dssn_counts(apply_fn, grid(seed, 4), v, spec)
    assert counts.shape == first.shape
  assert len(traces) == traced, traces[traced:]
  dssn_jax.dssn_counts(apply_fn, grid(4, 2), v, spec)  # A new batch shape.
  assert len(traces) > traced
  retraced = len(traces)
  dssn_jax.dssn_counts(apply_fn, grid(5, 2), v, spec)
  assert len(traces) == retraced


@pytest.mark.parametrize("on_mesh", [False, True])
@pytest.mark.parametrize("method", ["dssn", "uniform", "certify_randomized"])
def test_lowering_from_abstract_inputs_compiles_without_running(
    method, on_mesh
):
  """Lowered from abstract inputs (shapes and dtypes only) and compiled, the
  programs do not run (their classifier never executes); the real call after
  it compiles nothing and gives the true counts. With and without a mesh
  (the arguments' shardings are part of the compiled program)."""
  runs = []
  linear = make_linear(7)

  def apply_fn(batch):
    jax.debug.callback(lambda: runs.append(1))  # Fires when the program runs.
    return linear(batch)

  compiles = []
  listener = lambda event, seconds, **kw: compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    mesh = placement.make_mesh() if on_mesh else None
    spec = dssn_jax.SmoothingSpec(0.12)
    x = random_grid(jax.random.key(5), 3)
    abstract_x = jax.ShapeDtypeStruct(x.shape, x.dtype)
    key = jax.random.key(2)
    abstract_key = jax.eval_shape(jax.random.key, 2)
    v = dssn_jax.make_offsets(0, SHAPE, spec.levels)
    if method == "dssn":
      lowered = [dssn.lower_counts(apply_fn, abstract_x, v, spec, mesh=mesh)]
      count = lambda: dssn_jax.dssn_counts(apply_fn, x, v, spec, mesh=mesh)
      total = spec.levels
    elif method == "uniform":
      lowered = [
          randomized.lower_sample_counts(
              apply_fn,
              abstract_x,
              spec,
              abstract_key,
              noise=method,
              num_samples=40,
              mesh=mesh,
          )
      ]
      count = lambda: dssn_jax.sample_counts(
          apply_fn, x, spec, key, noise=method, num_samples=40, mesh=mesh
      )
      total = 40
    else:
      programs = randomized.lower_randomized(
          apply_fn,
          abstract_x,
          spec,
          abstract_key,
          noise="ssn",
          n0=8,
          n=40,
          mesh=mesh,
      )
      lowered = list(programs)
      assert programs.selection.out_info.shape == (3, NUM_CLASSES)
      assert programs.estimation.out_info.shape == (3, NUM_CLASSES)
      count = lambda: dssn_jax.certify_randomized(
          apply_fn, x, spec, key, noise="ssn", n0=8, n=40, mesh=mesh
      ).count_top
    assert lowered[-1].out_info.dtype == jnp.int32
    executables = [program.compile() for program in lowered]
    assert not runs
    compiled = sum("backend_compile" in e for e in compiles)
    assert compiled >= 1
    counts = np.asarray(count())
    assert runs  # It ran,
    assert sum("backend_compile" in e for e in compiles) == compiled  # cached.
    if method == "certify_randomized":
      assert ((0 <= counts) & (counts <= 40)).all()
      return
    assert counts.shape == lowered[0].out_info.shape
    np.testing.assert_array_equal(counts.sum(1), total)
    if method == "dssn":
      np.testing.assert_array_equal(counts, naive_counts(linear, x, v, spec))
      # The executable is the program a call runs: the same counts.
      program, args = dssn.dssn_program(apply_fn, x, v, spec, mesh=mesh)
      np.testing.assert_array_equal(
          executables[0](*program.place(*args)), counts
      )
      # Under the caller's jit the call is part of its program: true counts.
      jitted = jax.jit(
          lambda x: dssn_jax.dssn_counts(linear, x, v, spec, mesh=mesh)
      )
      np.testing.assert_array_equal(jitted(x), counts)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
