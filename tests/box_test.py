"""Top-2 and box-constrained certificates (dssn_jax/core/box.py).

Besides formula checks, the certificates are checked for soundness against
smoothed classifiers whose class probabilities are computed exactly: the base
classifier is piecewise constant on a product of intervals, and uniform and
SSN noise are independent across coordinates, so P(class | x) is a sum over
cells of products of one-dimensional masses (an interval overlap for uniform
noise, the push-forward of the split through the clipped centre formula for
SSN). Perturbations are searched on grids, on the l1 sphere within the box,
on its faces and corners; worst-case classifiers built for a given
perturbation show that the radii are tight.
"""

import itertools
import math
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dssn_jax.core import box
from dssn_jax.core import smoothing
from dssn_jax.core.clopper_pearson import clopper_pearson_lower

# ---------------------------------------------------------------------------
# Exact smoothed probabilities of piecewise-constant classifiers.


def _uniform_masses(z, edges, lam):
  """(N, E+1) mass of each cell [e_{j-1}, e_j) under z + U(-lam, lam)."""
  lo = np.concatenate([[-np.inf], edges])[None]
  hi = np.concatenate([edges, [np.inf]])[None]
  z = np.asarray(z, np.float64)[:, None]
  inside = np.minimum(hi, z + lam) - np.maximum(lo, z - lam)
  return np.clip(inside, 0, None) / (2 * lam)


def _ssn_centre(t, width):
  """The clipped centre of the piece (t - width, t] of [0, 1]."""
  return (np.minimum(t, 1.0) + np.maximum(t - width, 0.0)) / 2


def _ssn_masses(z, edges, lam):
  """(N, E+1) mass of each cell under SSN noise of the coordinate z.

  The upper end t of the piece that holds z is uniform on [z, z + w)
  (w = 2 lam: the split s is uniform, t = z + ((s - z) mod w)), and the
  noisy value is the centre g(t), piecewise linear in t with slope 1/2, 1 or
  0 (an atom at 1/2 while the piece covers [0, 1]); breaks at t = 1, w.
  """
  width = 2 * lam
  z = np.asarray(z, np.float64)
  lo = np.concatenate([[-np.inf], edges])[None]
  hi = np.concatenate([edges, [np.inf]])[None]
  cuts = np.sort(
      np.stack(
          [
              z,
              np.clip(1.0, z, z + width),
              np.clip(width, z, z + width),
              z + width,
          ],
          axis=1,
      ),
      axis=1,
  )
  masses = np.zeros((z.size, len(edges) + 1))
  for piece in range(3):
    t0, t1 = cuts[:, piece], cuts[:, piece + 1]
    mid = (t0 + t1) / 2
    slope = ((mid < 1).astype(float) + (mid > width)) / 2
    g0, g1 = _ssn_centre(t0, width), _ssn_centre(t1, width)
    flat = slope == 0
    # Sloped pieces: the t-length of {g(t) in [lo, hi)}.
    inside = np.minimum(hi, g1[:, None]) - np.maximum(lo, g0[:, None])
    sloped = np.clip(inside, 0, None) / np.where(flat, 1, slope)[:, None]
    masses += np.where(flat[:, None], 0.0, sloped)
    # Flat pieces: an atom at g, in the cell that holds it.
    cell = np.searchsorted(edges, _ssn_centre(mid, width), side="right")
    atom = np.zeros_like(masses)
    atom[np.arange(z.size), cell] = np.where(flat, t1 - t0, 0.0)
    masses += atom
  return masses / width


_MASSES = {"uniform": _uniform_masses, "ssn": _ssn_masses}


def _probs(noise, lam, edges, labels, num_classes, points):
  """(N, K) exact class probabilities of the smoothed classifier.

  Args:
    noise: "uniform" or "ssn".
    lam: noise half-width.
    edges: d sorted arrays; cell j of axis i is [edges[i][j-1], edges[i][j]).
    labels: int array of shape (len(edges[i]) + 1 for each i).
    num_classes: K.
    points: (N, d) inputs.
  """
  points = np.atleast_2d(points)
  d = points.shape[1]
  masses = [_MASSES[noise](points[:, i], edges[i], lam) for i in range(d)]
  onehot = np.eye(num_classes)[labels]
  axes = string.ascii_lowercase[:d]
  spec = ",".join("z" + a for a in axes) + "," + axes + "k->zk"
  return np.einsum(spec, *masses, onehot)


def _top_two(probs):
  order = np.argsort(-probs, axis=-1, kind="stable")
  rows = np.arange(len(probs))
  probs = np.clip(probs, 0, 1)  # sums of masses may round past 1
  return order[:, 0], probs[rows, order[:, 0]], probs[rows, order[:, 1]]


# ---------------------------------------------------------------------------
# Perturbations to search.


def _greedy_delta(x, radius, order=None):
  """The perturbation of l1 norm `radius` (or less, at the box's end) that
  moves the coordinates in `order` (default: largest room first) as far as
  they go towards the far side of [0, 1], then the next one."""
  x = np.asarray(x, np.float64)
  room = np.maximum(x, 1 - x)
  sign = np.where(x <= 0.5, 1.0, -1.0)
  order = np.argsort(-room, kind="stable") if order is None else order
  delta = np.zeros_like(x)
  left = radius
  for i in order:
    step = min(room[i], left)
    delta[i] = sign[i] * step
    left -= step
  return delta


def _candidates(x, radius, rng, grid=11, sphere=400):
  """Points of [0, 1]^d with ||x' - x||_1 < radius (radius may be inf)."""
  d = len(x)
  axes = [np.unique(np.r_[np.linspace(0, 1, grid), x[i]]) for i in range(d)]
  points = [np.array(list(itertools.product(*axes)))]
  faces = np.array(list(itertools.product(*[(0.0, 1.0, xi) for xi in x])))
  points.append(faces)
  if np.isfinite(radius):
    rho = radius * (1 - 1e-9)
    for _ in range(sphere // (d + 1)):
      points.append(x + _greedy_delta(x, rho, rng.permutation(d))[None])
    directions = rng.dirichlet(np.ones(d), size=sphere)
    directions *= rng.choice([-1.0, 1.0], size=(sphere, d))
    points.append(x + rho * directions)
    points.append(x + rho * directions * rng.uniform(0, 1, (sphere, 1)))
    points.append(x + _greedy_delta(x, rho)[None])
  points = np.concatenate(points)
  in_box = np.all((points >= 0) & (points <= 1), axis=1)
  near = np.abs(points - x).sum(axis=1) < radius * (1 - 1e-9)
  return points[in_box & near]


# ---------------------------------------------------------------------------
# Formulas.


def test_top2_radius_is_lambda_times_the_gap_and_abstains_at_zero():
  np.testing.assert_allclose(
      box.top2_radius(
          np.array([0.9, 0.6, 0.4, 0.5]), np.array([0.1, 0.3, 0.4, 0.6]), 2.0
      ),
      [1.6, 0.6, 0.0, 0.0],
  )


def test_top2_with_the_complement_is_the_yang_radius():
  p = np.linspace(0.5, 1, 11)
  lam = 1.3
  np.testing.assert_allclose(
      box.top2_radius(p, 1 - p, lam), 2 * lam * (p - 0.5), atol=1e-15
  )


def test_box_radius_closed_form_by_hand():
  # b = (0.5, 0.5, 0.5), lam = 1: factors 3/4; t = 1 - 0.85 / 2 = 0.575.
  # P_2 = 0.75 > t, P_3 = 0.5625 <= t: radius = 0.5 + 2 (1 - t / 0.75).
  x = np.full((1, 3), 0.5)
  radius = box.box_radius(x, np.array([0.9]), np.array([0.05]), 1.0)
  np.testing.assert_allclose(radius, [0.5 + 2 * (1 - 0.575 / 0.75)])
  # Pixels at 0 and 1 have room 1: with lam = 2 and t = 1/2 (p_a = 1), the
  # first two give 0.75^2 > 1/2, the third binds: 2 + 4 (1 - 0.5 / 0.5625).
  x = np.array([[0.0, 1.0, 0.0, 0.5]])
  radius = box.box_radius(x, np.array([1.0]), np.array([0.0]), 2.0)
  np.testing.assert_allclose(radius, [2 + 4 * (1 - 0.5 / 0.5625)])


def test_box_radius_is_infinite_when_the_whole_box_keeps_the_class():
  # One pixel at 1/2, lam = 5: ov >= 1 - 0.5 / 10 = 0.95 > t = 0.6.
  x = np.array([[0.5]])
  assert box.box_radius(x, np.array([0.85]), np.array([0.05]), 5.0)[0] == (
      np.inf
  )


def test_box_radius_never_below_top2_and_equal_where_the_box_cannot_bind():
  rng = np.random.default_rng(0)
  for lam in (0.1, 0.4, 0.9, 2.0, 6.0):
    x = rng.choice([0.0, 1.0, 0.5, 0.3], size=(400, 6)) * (
        rng.uniform(size=(400, 6)) < 0.7
    ) + rng.uniform(size=(400, 6)) * (rng.uniform(size=(400, 6)) >= 0.7)
    x = np.clip(x, 0, 1)
    p_a = rng.uniform(0, 1, 400)
    p_b = rng.uniform(0, 1, 400) * (1 - p_a)
    plain = box.top2_radius(p_a, p_b, lam)
    boxed = box.box_radius(x, p_a, p_b, lam)
    assert np.all(boxed >= plain - 1e-12)
    cannot_bind = plain <= np.maximum(x, 1 - x).max(axis=1)
    np.testing.assert_allclose(boxed[cannot_bind], plain[cannot_bind])
    assert np.any(boxed[~cannot_bind] > plain[~cannot_bind]) or lam < 1.5
    abstain = p_a <= p_b
    assert np.all(boxed[abstain] == 0) and np.all(plain[abstain] == 0)


def test_box_radius_is_the_smallest_reachable_norm_at_overlap_t():
  # Brute force over random perturbations within the box: none of l1 norm
  # below the radius reaches ov <= t, and the greedy one at the radius does.
  rng = np.random.default_rng(1)
  for _ in range(20):
    d = int(rng.integers(1, 5))
    x = rng.choice([0.0, 1.0, 0.2, 0.5, 0.9], size=d)
    lam = float(rng.uniform(0.3, 3))
    p_a = rng.uniform(0.5, 1)
    p_b = rng.uniform(0, 1 - p_a)
    t = 1 - (p_a - p_b) / 2
    radius = box.box_radius(x[None], np.array([p_a]), np.array([p_b]), lam)[0]
    room = np.maximum(x, 1 - x)
    moves = (
        rng.uniform(0, 1, (20000, d)) ** 3
        * room
        * rng.choice([-1, 1], (20000, d))
    )
    moves = moves[np.all((x + moves >= 0) & (x + moves <= 1), axis=1)]
    norms = np.abs(moves).sum(axis=1)
    assert np.all(box.overlap(moves[norms < radius], lam) > t - 1e-12)
    if np.isfinite(radius):
      worst = _greedy_delta(x, radius)
      np.testing.assert_allclose(np.abs(worst).sum(), radius)
      np.testing.assert_allclose(box.overlap(worst, lam), t, atol=1e-12)
    else:
      assert box.overlap(_greedy_delta(x, room.sum()), lam) > t


def test_box_radius_traces_under_jit_like_numpy():
  rng = np.random.default_rng(2)
  x = rng.uniform(size=(8, 4, 4, 1))
  x[:, 0] = 0.0
  p_a = rng.uniform(0.5, 1, 8)
  p_b = rng.uniform(0, 1, 8) * (1 - p_a)
  expected = box.box_radius(x, p_a, p_b, 1.7)
  traced = jax.jit(lambda *a: box.box_radius(*a, 1.7))(
      jnp.asarray(x), jnp.asarray(p_a), jnp.asarray(p_b)
  )
  np.testing.assert_allclose(traced, expected, rtol=1e-5)
  traced = jax.jit(lambda *a: box.top2_radius(*a, 1.7))(
      jnp.asarray(p_a), jnp.asarray(p_b)
  )
  np.testing.assert_allclose(traced, box.top2_radius(p_a, p_b, 1.7), rtol=1e-6)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    box.box_radius(np.array([[1.5]]), np.array([0.9]), np.array([0.0]), 1.0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    box.box_radius(np.array([[np.nan]]), np.array([0.9]), np.array([0.0]), 1)
  with pytest.raises(ValueError, match="lam"):
    box.top2_radius(0.9, 0.1, 0.0)
  with pytest.raises(ValueError, match="shape"):
    box.box_radius(np.zeros((3, 2)), np.array([0.9, 0.8]), 0.0, 1.0)
  with pytest.raises(ValueError, match="count_a"):
    box.joint_bounds(60, 50, 100, 0.001)
  with pytest.raises(ValueError, match="pred"):
    box.top_two_counts(np.array([[1, 2]]), np.array([2]))


# ---------------------------------------------------------------------------
# Bounds.


def test_bounds_are_the_ends_of_the_two_sided_interval():
  n, alpha = 1000, 0.01
  k = np.array([0, 1, 17, 500, 999, 1000])
  np.testing.assert_allclose(
      box.clopper_pearson_upper(k, n, alpha),
      np.where(k == n, 1.0, stats.beta.ppf(1 - alpha / 2, k + 1, n - k)),
      rtol=1e-10,
  )
  p_a, p_b = box.joint_bounds(
      np.array([900, 700]), np.array([50, 290]), n, alpha
  )
  np.testing.assert_array_equal(
      p_a, clopper_pearson_lower(np.array([900, 700]), n, alpha)
  )
  assert np.all(p_b <= 1 - p_a)
  np.testing.assert_allclose(
      p_b[0], stats.beta.ppf(1 - alpha / 2, 51, n - 50), rtol=1e-10
  )


def test_top_two_counts_take_the_largest_other_class():
  counts = np.array([[5, 9, 2, 9], [7, 0, 0, 0], [1, 2, 3, 4]])
  count_a, count_b = box.top_two_counts(counts, np.array([0, 0, 3]))
  np.testing.assert_array_equal(count_a, [5, 7, 4])
  np.testing.assert_array_equal(count_b, [9, 0, 3])


@pytest.mark.parametrize(
    "probs",
    [
        (0.6, 0.2, 0.2),  # the runner-up is ambiguous
        (0.5, 0.3, 0.1, 0.1),
        (0.9, 0.05, 0.03, 0.02),
        (0.45, 0.45, 0.1),  # A is often not the top count
        (0.98, 0.02),
    ],
)
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_joint_bounds_cover_both_probabilities_together(probs, alpha):
  rng = np.random.default_rng(3)
  draws, n = 40_000, 150
  counts = rng.multinomial(n, probs, size=draws)
  count_a = counts[:, 0]  # A chosen beforehand (by the n0 samples)
  count_b = counts[:, 1:].max(axis=1)
  p_a, p_b = box.joint_bounds(count_a, count_b, n, alpha)
  covered = (p_a <= probs[0]) & (p_b >= max(probs[1:]))
  slack = 4 * math.sqrt(alpha * (1 - alpha) / draws)
  assert covered.mean() >= 1 - alpha - slack
  # Each bound alone misses at most alpha / 2 of the time.
  assert (p_a > probs[0]).mean() <= alpha / 2 + slack
  assert (p_b < max(probs[1:])).mean() <= alpha / 2 + slack


def test_top2_radius_is_never_below_yang_from_the_same_counts():
  rng = np.random.default_rng(4)
  n, alpha, lam = 500, 0.001, 0.9
  counts = rng.multinomial(n, rng.dirichlet([5, 1, 1, 1]), size=2000)
  count_a, count_b = box.top_two_counts(counts, np.zeros(2000, np.int64))
  p_a, p_b = box.joint_bounds(count_a, count_b, n, alpha)
  yang = 2 * lam * (clopper_pearson_lower(count_a, n, alpha) - 0.5)
  top2 = box.top2_radius(p_a, p_b, lam)
  assert np.all(top2 >= np.maximum(yang, 0) - 1e-12)
  assert np.any(top2 > yang + 0.05)


def test_certify_box_abstains_with_radius_zero():
  counts = np.array([[60, 40, 0], [95, 3, 2], [10, 80, 10]])
  x = np.zeros((3, 2, 2))
  result = box.certify_box(
      counts, np.array([0, 0, 1]), x, n=100, alpha=0.001, lam=2.0
  )
  np.testing.assert_array_equal(result.pred, [-1, 0, 1])
  assert result.radius_top2[0] == 0 and result.radius_box[0] == 0
  assert np.all(result.radius_box >= result.radius_top2)
  assert result.radius_box[1] > result.radius_top2[1]


# ---------------------------------------------------------------------------
# SSN: a coordinate's noisy value changes with probability min(1, a / w).


@pytest.mark.parametrize("lam", [0.1, 0.45, 0.8, 2.5])
def test_ssn_coordinate_changes_with_probability_shift_over_width(lam):
  # With the library's own noise: the same key draws the same splits for x
  # and x'. Pairs at and near 0 and 1, where the pieces are clipped.
  spec = smoothing.SmoothingSpec(sigma=lam / math.sqrt(3))
  width = 2 * lam
  pairs = [
      (0.0, 0.1),
      (0.0, 1.0),
      (0.3, 0.0),
      (1.0, 0.95),
      (1.0, 0.2),
      (0.5, 0.55),
      (0.02, 0.98),
  ]
  draws = 200_000
  for z, z2 in pairs:
    key = jax.random.key(int(1000 * z + 10 * z2))
    noisy = smoothing.ssn_noise(key, jnp.full((draws,), z), spec)
    noisy2 = smoothing.ssn_noise(key, jnp.full((draws,), z2), spec)
    changed = np.mean(np.asarray(noisy) != np.asarray(noisy2))
    expected = min(1.0, abs(z - z2) / width)
    assert abs(changed - expected) <= 5 * math.sqrt(0.25 / draws) + 1e-3


def test_ssn_exact_masses_match_the_library_noise():
  rng = np.random.default_rng(5)
  edges = np.sort(rng.uniform(-0.05, 1.05, 7))
  for lam in (0.2, 0.7, 1.6):
    spec = smoothing.SmoothingSpec(sigma=lam / math.sqrt(3))
    for z in (0.0, 0.37, 1.0):
      noisy = np.asarray(
          smoothing.ssn_noise(jax.random.key(7), jnp.full((100_000,), z), spec)
      )
      cells = np.searchsorted(edges, noisy, side="right")
      freq = np.bincount(cells, minlength=len(edges) + 1) / noisy.size
      exact = _ssn_masses(np.array([z]), edges, lam)[0]
      np.testing.assert_allclose(exact.sum(), 1.0)
      np.testing.assert_allclose(freq, exact, atol=6e-3)


# ---------------------------------------------------------------------------
# Soundness against exact smoothed classifiers.


def _random_classifier(rng, d, num_classes, lam, noise):
  span = (-lam, 1 + lam) if noise == "uniform" else (0.0, 1.0)
  edges = [
      np.sort(rng.uniform(*span, int(rng.integers(1, 6)))) for _ in range(d)
  ]
  shape = tuple(len(e) + 1 for e in edges)
  # Class 0 is favoured, so that many inputs get a (large) certificate.
  share = rng.uniform(0.5, 0.97)
  probs = np.r_[
      share, np.full(num_classes - 1, (1 - share) / (num_classes - 1))
  ]
  labels = rng.choice(num_classes, size=shape, p=probs)
  return edges, labels


@pytest.mark.parametrize("noise", ["uniform", "ssn"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_no_perturbation_inside_the_radius_changes_the_prediction(noise, d):
  rng = np.random.default_rng(10 + d)
  checked = bound = 0
  for trial in range(40 if d < 3 else 15):
    lam = float(rng.choice([0.15, 0.4, 0.8, 1.5, 3.0, 6.0]))
    edges, labels = _random_classifier(rng, d, 3, lam, noise)
    # Inputs with pixels at 0 and 1 as well as inside.
    x = rng.choice([0.0, 1.0, rng.uniform(), rng.uniform()], size=d)
    probs = _probs(noise, lam, edges, labels, 3, x[None])[0]
    pred, p_a, p_b = (a[0] for a in _top_two(probs[None]))
    if p_a - p_b < 1e-9:
      continue
    plain = box.top2_radius(p_a, p_b, lam)
    radius = box.box_radius(x[None], np.array([p_a]), np.array([p_b]), lam)[0]
    assert radius >= plain - 1e-12
    if plain <= np.maximum(x, 1 - x).max():
      np.testing.assert_allclose(radius, plain)
    else:
      bound += 1
    points = _candidates(x, radius, rng, grid=11 if d < 3 else 7)
    near = _probs(noise, lam, edges, labels, 3, points)
    # The lemma behind both radii, at every point of the box.
    lost = 1 - box.overlap(points - x, lam)
    assert np.all(near[:, pred] >= probs[pred] - lost - 1e-12)
    assert np.all(near <= probs + lost[:, None] + 1e-12)
    margin = near[:, pred] - np.delete(near, pred, axis=1).max(axis=1)
    assert np.all(margin > -1e-12), (trial, x, lam, p_a, p_b, radius)
    checked += len(points)
  assert checked > 1000 and bound > 0


def test_uniform_top2_radius_holds_outside_the_box_too():
  # Yang et al.'s and the top-2 radius need no box for uniform noise.
  rng = np.random.default_rng(20)
  for _ in range(30):
    lam = float(rng.choice([0.3, 1.0, 2.0]))
    edges, labels = _random_classifier(rng, 2, 3, lam, "uniform")
    x = rng.uniform(size=2)
    probs = _probs("uniform", lam, edges, labels, 3, x[None])[0]
    pred, p_a, p_b = (a[0] for a in _top_two(probs[None]))
    radius = box.top2_radius(p_a, p_b, lam)
    directions = rng.dirichlet([1, 1], 500) * rng.choice([-1, 1], (500, 2))
    points = x + radius * (1 - 1e-9) * directions * rng.uniform(0, 1, (500, 1))
    near = _probs("uniform", lam, edges, labels, 3, points)
    assert np.all(near.argmax(axis=1) == pred)


# ---------------------------------------------------------------------------
# Tightness: a worst-case classifier flips just outside the radius.


def _cell_kinds(noise, lam, edges, z, z2):
  """Per cell of one axis: 0 reached only from z, 1 from both, 2 only from
  z2, 3 from neither."""
  m = _MASSES[noise](np.array([z]), edges, lam)[0]
  m2 = _MASSES[noise](np.array([z2]), edges, lam)[0]
  both = (m > 0) & (m2 > 0)
  return np.where(both, 1, np.where(m > 0, 0, np.where(m2 > 0, 2, 3))), m


def _cell_mids(edges):
  return (np.r_[edges[0] - 1, edges] + np.r_[edges, edges[-1] + 1]) / 2


def _worst_case_classifier(noise, lam, x, delta, eta, frac_c, split):
  """A classifier for which x has class 0 (A) but x + delta does not.

  Per axis, the noisy values split into a part only x reaches, a part both
  reach (with equal mass) and a part only x' = x + delta reaches. Class 0 on
  every cell with a coordinate in x's own part, class 1 on x''s own part;
  the common part (mass ov) is split along axis 0 into class 1 / 2 / 0
  slabs of fractions f_1, frac_c, f_0 with p_0 - p_1 = 2 (1 - ov) - eta, so
  that x' has P(1) - P(0) = eta. With split=False the common part is all
  class 0 (p_0 = 1). Returns (edges, labels).
  """
  x2 = x + delta
  width = 2 * lam
  edges = []
  for z, z2 in zip(x, x2):
    lo, a = min(z, z2), abs(z2 - z)
    if noise == "uniform":
      points = [z - lam, z + lam, z2 - lam, z2 + lam]
    else:  # the centres of the ends of the t-ranges, the atom isolated
      ends = np.array([lo, lo + a, lo + width, lo + a + width])
      points = list(_ssn_centre(ends, width)) + [0.5 - 1e-9, 0.5 + 1e-9]
    edges.append(np.unique(points))
  kinds = [_cell_kinds(noise, lam, e, z, z2) for e, z, z2 in zip(edges, x, x2)]
  ov = math.prod(m[k == 1].sum() for k, m in kinds)
  cuts = []
  if split:
    gap = ((1 - ov) - eta) / ov  # f_0 - f_1
    f1 = (1 - frac_c - gap) / 2
    assert 0 <= f1 and f1 + frac_c <= 1, (ov, gap)
    common = np.nonzero(kinds[0][0] == 1)[0]
    e0 = np.r_[-np.inf, edges[0], np.inf]
    c_lo, c_hi = e0[common[0]], e0[common[-1] + 1]
    mass = lambda c: _MASSES[noise](np.array([x[0]]), np.array([c_lo, c]), lam)[
        0, 1
    ]
    total = mass(c_hi)
    for target in (f1, f1 + frac_c):
      a, b = c_lo, c_hi
      for _ in range(100):
        c = (a + b) / 2
        a, b = (c, b) if mass(c) < target * total else (a, c)
      cuts.append((a + b) / 2)
    edges[0] = np.unique(np.r_[edges[0], cuts])
    kinds[0] = _cell_kinds(noise, lam, edges[0], x[0], x2[0])
  grids = np.meshgrid(*[k for k, _ in kinds], indexing="ij")
  own = np.any([g == 0 for g in grids], axis=0)
  other = np.any([g == 2 for g in grids], axis=0)
  common = np.all([g == 1 for g in grids], axis=0)
  if split:
    mids = _cell_mids(edges[0])
    slab = np.where(mids < cuts[0], 1, np.where(mids < cuts[1], 2, 0))
    slab = np.broadcast_to(
        slab.reshape((-1,) + (1,) * (len(x) - 1)), common.shape
    )
  else:
    slab = np.zeros(common.shape, int)
  labels = np.where(common, slab, 2)
  labels = np.where(other & ~own, 1, labels)
  labels = np.where(own, 0, labels)
  return edges, labels


def _tightness_case(noise, lam, x, radius, eta, frac_c, split, rng):
  """Builds the worst case for the greedy perturbation of l1 norm `radius`
  and checks: x + delta flips, the certified radius is at most ||delta||_1
  and within a hair of it, and no searched point inside it flips."""
  delta = _greedy_delta(x, radius)
  edges, labels = _worst_case_classifier(
      noise, lam, x, delta, eta, frac_c, split
  )
  probs = _probs(noise, lam, edges, labels, 3, np.stack([x, x + delta]))
  pred, p_a, p_b = (a[0] for a in _top_two(probs[:1]))
  assert pred == 0
  assert probs[1].argmax() != 0  # x + delta flips
  certified = box.box_radius(x[None], np.array([p_a]), np.array([p_b]), lam)
  norm = np.abs(delta).sum()
  assert certified[0] <= norm + 1e-12  # sound
  assert certified[0] >= norm - 2 * lam * eta - 1e-6  # tight
  points = _candidates(x, certified[0], rng, grid=9)
  near = _probs(noise, lam, edges, labels, 3, points)
  assert np.all(near.argmax(axis=1) == 0)
  return certified[0], box.top2_radius(p_a, p_b, lam)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_uniform_radii_are_tight_for_a_worst_case_classifier(d):
  rng = np.random.default_rng(30 + d)
  binding = ran = 0
  for _ in range(12):
    lam = float(rng.choice([0.3, 0.7, 1.5, 3.0]))
    x = rng.choice([0.0, 1.0, 0.5, rng.uniform()], size=d)
    room = np.maximum(x, 1 - x)
    # A perturbation whose overlap stays above 1/2, so that it can be the
    # worst case of some (p_a, p_b).
    radius = rng.uniform(0.05, 1) * min(room.sum(), 0.6 * lam)
    if box.overlap(_greedy_delta(x, radius), lam) <= 0.55:
      continue
    frac_c = float(rng.choice([0.0, 0.1]))
    certified, plain = _tightness_case(
        "uniform", lam, x, radius, 1e-6, frac_c, True, rng
    )
    binding += certified > plain + 1e-6
    ran += 1
  assert ran >= 5 and (binding > 0 or d == 1)


@pytest.mark.parametrize("d", [1, 2])
def test_ssn_radii_are_tight_for_a_worst_case_classifier(d):
  rng = np.random.default_rng(40 + d)
  ran = 0
  for _ in range(10):
    lam = float(rng.choice([0.2, 0.35, 0.45]))
    x = rng.choice([0.0, 1.0, 0.5, rng.uniform()], size=d)
    radius = rng.uniform(0.05, 1) * min(np.maximum(x, 1 - x).sum(), 0.6 * lam)
    if box.overlap(_greedy_delta(x, radius), lam) <= 0.55:
      continue
    _tightness_case("ssn", lam, x, radius, 1e-6, 0.1, True, rng)
    ran += 1
  assert ran >= 5


@pytest.mark.parametrize("noise", ["uniform", "ssn"])
def test_box_radius_is_tight_where_it_binds_at_p_a_one(noise):
  # p_a = 1, p_b = 0 (t = 1/2): the worst case needs no split of the common
  # part, so SSN with w = 2 lam > 1 (an atom at 1/2) works too. With lam = 2
  # and pixels at 0 and 1 the box binds: 0.75^2 > 1/2 > 0.75^3.
  rng = np.random.default_rng(50)
  x = np.array([0.0, 1.0, 0.0])
  lam = 2.0
  # ov(greedy(r)) = 1/2 at r = 2 + 4 (1 - 0.5 / 0.5625); just beyond it:
  radius = 2 + 4 * (1 - 0.5 / 0.5625) + 1e-6
  certified, plain = _tightness_case(noise, lam, x, radius, 0, 0, False, rng)
  np.testing.assert_allclose(certified, radius, atol=1e-5)
  np.testing.assert_allclose(plain, lam)
