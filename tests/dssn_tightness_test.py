"""Can the box raise a DSSN certificate? (dssn_jax/core/dssn_tightness.py)

The brute force computes, on tiny quantized problems, the exact worst case
over all base classifiers with given vote counts: the l1 distance (in grid
steps, within [0, 1]^d) of the nearest grid point where some classifier with
those counts at x loses the prediction. The DSSN certificate must never
exceed it, must equal it wherever `exact_up_to` says so, and the box raises
it only when L > q.
"""

import gzip
import itertools
import math
import os

import numpy as np
import pytest

from dssn_jax.core import dssn_tightness
from dssn_jax.core import smoothing
from dssn_jax.core.smoothing import SmoothingSpec

FASHION_TEST_IMAGES = (
    "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
)


def _spec(q, levels):
  return SmoothingSpec(sigma=levels / (2 * math.sqrt(3) * q), q=q)


def _noisy_ids(spec, v, grid_points):
  """(G, L) int: an id of the noisy input of every sample at every point."""
  codes = np.stack(
      [dssn_tightness.noisy_grid(a / spec.q, v, spec) for a in grid_points]
  )
  return codes @ (4 * spec.q + 1) ** np.arange(codes.shape[-1])


def _certificate(c0, levels):
  """(prediction, steps) of two-class counts (c0, L - c0), design.md
  section 1: the lower index wins ties."""
  c1 = levels - c0
  pred = 0 if c0 >= c1 else 1
  gap = abs(c0 - c1) - (1 if pred == 1 else 0)
  return pred, gap // 2


def _flip_possible(ids_x, ids_y, levels):
  """For each c0 in 0..L: can a two-class classifier with c0 votes for
  class 0 at x predict another class at y? (Labels of the distinct noisy
  inputs of x and y, by dynamic programming over the achievable pairs
  (votes for 0 at x, votes for 0 at y).)"""
  both, inverse = np.unique(np.r_[ids_x, ids_y], return_inverse=True)
  w_x = np.bincount(inverse[:levels], minlength=len(both))
  w_y = np.bincount(inverse[levels:], minlength=len(both))
  reach = np.zeros((levels + 1, levels + 1), bool)
  reach[0, 0] = True
  for wx, wy in zip(w_x, w_y):
    shifted = np.zeros_like(reach)
    shifted[wx:, wy:] = reach[: levels + 1 - wx, : levels + 1 - wy]
    reach |= shifted
  pred = np.array([_certificate(c0, levels)[0] for c0 in range(levels + 1)])
  return (reach & (pred[:, None] != pred[None, :])).any(axis=1)


def _worst_case_steps(spec, v, d):
  """{(point index, c0): smallest grid distance - 1 of a possible flip}
  over all two-class classifiers, and the grid points."""
  points = np.array(list(itertools.product(range(spec.q + 1), repeat=d)))
  ids = _noisy_ids(spec, v, points)
  dist = np.abs(points[:, None] - points[None]).sum(-1)
  worst = {}
  for i in range(len(points)):
    robust = np.full(spec.levels + 1, np.inf)
    for j in np.argsort(dist[i], kind="stable")[1:]:
      flips = _flip_possible(ids[i], ids[j], spec.levels)
      robust = np.where(flips & np.isinf(robust), dist[i, j] - 1, robust)
    for c0 in range(spec.levels + 1):
      worst[i, c0] = robust[c0]
  return worst, points


@pytest.mark.parametrize(
    "q,levels,d",
    [
        (4, 3, 2),
        (4, 4, 2),
        (4, 6, 2),
        (4, 7, 2),
        (4, 9, 2),
        (5, 4, 1),
        (5, 5, 1),
        (5, 8, 1),
        (5, 11, 1),
    ],
)
def test_certificate_against_the_exact_worst_case_in_the_box(q, levels, d):
  spec = _spec(q, levels)
  rng = np.random.default_rng(q * 100 + levels)
  gains = 0
  for _ in range(3 if d == 2 else 1):
    v = rng.integers(0, levels, d)
    worst, points = _worst_case_steps(spec, v, d)
    for i, a in enumerate(points):
      exact_up_to = dssn_tightness.exact_up_to(a / q, v, spec)
      reach = np.maximum(a, q - a).sum()  # the farthest grid point
      for c0 in range(levels + 1):
        steps = _certificate(c0, levels)[1]
        assert worst[i, c0] >= steps  # the certificate is sound
        if steps + 1 <= exact_up_to:
          assert worst[i, c0] == steps  # and exact, as claimed
        if steps < reach and worst[i, c0] > steps:
          gains += 1
  # The box raises the exact worst case only when L > q (for L > q it
  # depends on v; test_found_gains_are_those_of_the_design_note has one).
  if levels <= q:
    assert gains == 0


def test_the_dynamic_programme_agrees_with_enumerating_classifiers():
  # d = 1, q = 4, L = 6: every two-class labelling of the noisy values.
  spec = _spec(4, 6)
  points = np.arange(5)[:, None]
  ids = _noisy_ids(spec, np.array([2]), points)
  values, index = np.unique(ids, return_inverse=True)
  index = index.reshape(ids.shape)
  labels = np.array(list(itertools.product((0, 1), repeat=len(values))))
  votes0 = (labels[:, index] == 0).sum(-1)  # (F, points)
  pred = np.where(votes0 >= 6 - votes0, 0, 1)
  worst, _ = _worst_case_steps(spec, np.array([2]), 1)
  dist = np.abs(points - points.T)
  for i in range(5):
    flips = pred != pred[:, i : i + 1]
    robust = np.where(flips, dist[i], 99).min(axis=1) - 1
    for c0 in range(7):
      mine = robust[votes0[:, i] == c0]
      if len(mine):
        expected = mine.min() if mine.min() < 98 else np.inf
        assert worst[i, c0] == expected


def test_found_gains_are_those_of_the_design_note():
  # q = 4, L = 6, v = (0, 0), x = (1, 3) / 4, all 6 votes for class 0: the
  # certificate says 3 steps; within the box no 4-step move changes 4
  # samples, and the exact worst case first flips 5 + 1 steps away.
  spec = _spec(4, 6)
  worst, points = _worst_case_steps(spec, np.array([0, 0]), 2)
  i = int(np.nonzero((points == [1, 3]).all(axis=1))[0][0])
  assert _certificate(6, 6)[1] == 3 and worst[i, 6] == 5
  assert dssn_tightness.exact_up_to(points[i] / 4, np.array([0, 0]), spec) < 4


@pytest.mark.parametrize("levels", [7, 100, 255, 300, 883])
def test_a_move_changes_the_cyclic_block_of_samples_at_its_anchor(levels):
  q = 255
  spec = _spec(q, levels)
  rng = np.random.default_rng(levels)
  a = rng.integers(0, q + 1, 12)
  a[:3] = (0, q, q // 2)
  v = rng.integers(0, levels, 12)
  u = dssn_tightness.anchors(a, v, levels)
  before = dssn_tightness.noisy_grid(a / q, v, spec)
  for i in range(12):
    for n in (1, 2, 37, q):
      for sign in (1, -1):
        if not 0 <= a[i] + sign * n <= q:
          continue
        moved = a.copy()
        moved[i] += sign * n
        after = dssn_tightness.noisy_grid(moved / q, v, spec)
        changed = np.nonzero((after != before).any(axis=1))[0]
        block = u[i] + np.arange(n) if sign > 0 else u[i] - 1 - np.arange(n)
        np.testing.assert_array_equal(
            changed, np.unique(block[: min(n, levels)] % levels)
        )


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0, 2.0])
def test_disjoint_moves_change_one_sample_per_step(sigma):
  spec = SmoothingSpec(sigma=sigma, q=255)
  rng = np.random.default_rng(int(sigma * 8))
  a = rng.integers(0, 256, (8, 8, 1))
  a[rng.uniform(size=a.shape) < 0.4] = 0  # background pixels
  v = rng.integers(0, spec.levels, a.shape)
  steps = dssn_tightness.disjoint_moves(a, v, spec.q, spec.levels)
  moved = a + steps
  assert np.all((moved >= 0) & (moved <= spec.q))
  before = dssn_tightness.noisy_grid(a / spec.q, v, spec)
  total = int(np.abs(steps).sum())
  assert total > 0
  for size in (1, total // 3, total):
    part = dssn_tightness.trim(steps, size)
    assert np.abs(part).sum() == size
    after = dssn_tightness.noisy_grid((a + part) / spec.q, v, spec)
    assert (after != before).any(axis=1).sum() == size


def _fashion_test_images(count):
  with gzip.open(FASHION_TEST_IMAGES, "rb") as f:
    data = f.read(16 + 784 * count)
  return np.frombuffer(data, np.uint8, offset=16).reshape(count, 28, 28, 1)


@pytest.mark.skipif(
    not os.path.exists(FASHION_TEST_IMAGES), reason="no Fashion-MNIST files"
)
@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0, 2.0])
def test_fashion_mnist_certificates_cannot_be_raised(sigma):
  # Every certificate has steps <= L / 2; on real images all of them are
  # exact given x, v and the box (docs/design.md, section 6).
  spec = SmoothingSpec(sigma=sigma, q=255)
  v = smoothing.make_offsets(0, (28, 28, 1), spec.levels)
  for image in _fashion_test_images(3):
    bound = dssn_tightness.exact_up_to(image / 255, v, spec)
    assert bound >= spec.levels // 2 + 1
