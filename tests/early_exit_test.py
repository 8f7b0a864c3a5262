"""Exact early exit for DSSN (core/early_exit.py, core/dssn_decide.py).

The decision criteria against brute force over every completion of every
count vector of small L, and every vote sequence of L <= 7 over 3 classes
stopped at its first decided prefix; then early-exit runs against full
enumerations (random classifiers at every sigma of the study, constructed
ties, jit, packing shapes), and the trained smoke CNN in the slow tier.
"""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fashion_mnist as fashion_mnist_config
import dssn_jax
from dssn_jax.core import dssn
from dssn_jax.core import dssn_decide
from dssn_jax.core import early_exit
from dssn_jax.data import eval_input
from dssn_jax.training import checkpoints
from dssn_jax.training import classifier as classifier_training
from tests.conftest import cpu_subprocess_env
from tests.conftest import run_python

STUDY_SIGMAS = (0.25, 0.5, 1.0, 2.0)


def _compositions(total, parts):
  if parts == 1:
    yield (total,)
    return
  for i in range(total + 1):
    for rest in _compositions(total - i, parts - 1):
      yield (i,) + rest


def _final(c):
  """(pred, steps) of full counts by the definition (stable sort)."""
  c = np.asarray(c)
  order = np.argsort(-c, kind="stable")
  a, b = int(order[0]), int(order[1])
  return a, (c[a] - c[b] - (b < a)) // 2


def _truth(c, remaining):
  """Brute force over all completions: (pred fixed, min steps, max steps)."""
  finals = [_final(np.add(c, d)) for d in _compositions(remaining, len(c))]
  steps = np.array([f[1] for f in finals])
  return len({f[0] for f in finals}) == 1, steps.min(), steps.max()


@pytest.mark.parametrize("classes,max_levels", [(2, 12), (3, 9), (4, 6)])
def test_decide_matches_brute_force_on_every_small_count(classes, max_levels):
  checked = 0
  for levels in range(1, max_levels + 1):
    thresholds = np.arange(0, levels // 2 + 2)
    rows, remaining, truth = [], [], []
    for k in range(levels + 1):
      for c in _compositions(k, classes):
        rows.append(c)
        remaining.append(levels - k)
        truth.append(_truth(c, levels - k))
    d = early_exit.decide(np.array(rows), np.array(remaining), thresholds)
    for i, (fixed, lo, hi) in enumerate(truth):
      assert d.pred_fixed[i] == fixed, (rows[i], remaining[i])
      np.testing.assert_array_equal(d.certified[i], lo >= thresholds)
      np.testing.assert_array_equal(d.refused[i], hi < thresholds)
      assert d.steps_upper[i] == hi
      checked += 1
    # With nothing left the answers are the full certificate's.
    full = np.array([r for r, rem in zip(rows, remaining) if rem == 0])
    _, steps, _ = dssn.certify_from_counts(full, _Spec(levels))
    d0 = early_exit.decide(full, 0, thresholds)
    assert d0.decided.all()
    np.testing.assert_array_equal(
        d0.certified, steps[:, None] >= thresholds[None]
    )
  assert checked > 300


class _Spec:
  """The two fields certify_from_counts reads, for any L."""

  def __init__(self, levels):
    self.levels, self.q, self.sigma = levels, 255, None


def test_every_vote_sequence_stopped_early_gives_the_full_answers():
  """All 3**7 vote sequences of L = 7 over 3 classes (and shorter L): stop
  at the first decided prefix; its answers are the full run's."""
  for levels, thresholds in itertools.product(
      range(1, 8), ([0], [1], [2], [1, 3], list(range(6)))
  ):
    thresholds = np.asarray(thresholds)
    seqs = np.array(list(itertools.product(range(3), repeat=levels)))
    onehot = seqs[:, :, None] == np.arange(3)
    prefix = np.concatenate(
        [np.zeros((len(seqs), 1, 3), int), np.cumsum(onehot, axis=1)], axis=1
    )  # (S, L + 1, 3) counts after k votes.
    full = early_exit.decide(prefix[:, -1], 0, thresholds)
    stopped = np.full(len(seqs), -1)
    for k in range(levels + 1):
      d = early_exit.decide(prefix[:, k], levels - k, thresholds)
      first = d.decided & (stopped < 0)
      stopped[first] = k
      np.testing.assert_array_equal(d.pred[first], full.pred[first])
      np.testing.assert_array_equal(d.certified[first], full.certified[first])
      # Whatever is claimed before the end holds at the end.
      np.testing.assert_array_equal(d.certified & full.certified, d.certified)
      assert not (d.refused & full.certified).any()
    assert (stopped >= 0).all()
    if levels >= 5 and thresholds.max() <= 1:
      assert (stopped < levels).any()  # Some sequences do stop early.


def test_decide_on_ten_classes_against_brute_force():
  rng = np.random.default_rng(1)
  for _ in range(150):
    remaining = int(rng.integers(0, 4))
    c = rng.multinomial(int(rng.integers(0, 12)), rng.dirichlet(np.ones(10)))
    fixed, lo, hi = _truth(c, remaining)
    thresholds = np.arange(0, 9)
    d = early_exit.decide(c[None], remaining, thresholds)
    assert d.pred_fixed[0] == fixed
    np.testing.assert_array_equal(d.certified[0], lo >= thresholds)
    np.testing.assert_array_equal(d.refused[0], hi < thresholds)


def test_decide_under_jit_equals_numpy():
  rng = np.random.default_rng(2)
  counts = rng.integers(0, 40, (64, 10))
  remaining = rng.integers(0, 60, 64)
  thresholds = np.array([0, 1, 3, 7, 12])
  expect = early_exit.decide(counts, remaining, thresholds)
  got = jax.jit(early_exit.decide)(
      jnp.asarray(counts), jnp.asarray(remaining), jnp.asarray(thresholds)
  )
  for e, g in zip(expect, got):
    np.testing.assert_array_equal(e, np.asarray(g))


def test_radius_steps_is_the_float_comparison_of_the_tables():
  q = 255
  radii = [0.0, -1.0, 1 / 255, 0.5, 1.0, 127 / 255, 0.49999, 2.0, 4.0]
  s = early_exit.radius_steps(radii, q)
  for r, t in zip(radii, s):
    assert t / q >= r and (t == 0 or (t - 1) / q < r)


def _mlp(classes=4, seed=0, scale=3.0):
  w1 = jax.random.normal(jax.random.key(seed), (36, 16)) * scale
  w2 = jax.random.normal(jax.random.key(seed + 1), (16, classes))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 - 1) @ w2


def _full(apply_fn, x, v, spec, radii):
  counts = np.asarray(dssn.dssn_counts(apply_fn, x, v, spec))
  pred, _, radius = dssn.certify_from_counts(counts, spec)
  return pred, radius[:, None] >= np.asarray(radii)[None]


def _radii_around_thresholds(radius):
  """Radii at the full run's radii and between them."""
  r = np.unique(radius)
  return np.unique(np.r_[0.0, r, r + 0.5 / 255, r - 0.5 / 255, 10.0])


@pytest.mark.parametrize("sigma", STUDY_SIGMAS)
def test_early_exit_equals_full_run_on_random_classifiers(sigma):
  spec = dssn_jax.SmoothingSpec(sigma)
  shape = (6, 6, 1)
  rng = np.random.default_rng(int(sigma * 4))
  x = (rng.integers(0, 256, (24,) + shape) / 255).astype(np.float32)
  v = dssn_jax.make_offsets(3, shape, spec.levels)
  apply_fn = _mlp(seed=int(sigma * 4), scale=0.3 + sigma)
  counts = np.asarray(dssn.dssn_counts(apply_fn, x, v, spec))
  _, _, radius = dssn.certify_from_counts(counts, spec)
  radii = _radii_around_thresholds(radius)
  pred, certified = _full(apply_fn, x, v, spec, radii)
  for slots, pool in ((64, 3), (257, 24)):
    d = dssn_decide.dssn_decide(
        apply_fn, x, v, spec, radii, slots=slots, pool_size=pool
    )
    np.testing.assert_array_equal(d.pred, pred)
    np.testing.assert_array_equal(d.certified, certified)
    assert (d.splits <= spec.levels).all()
    assert (d.evaluated >= d.splits).all()
  # A single question (the largest radius any input reaches) is settled
  # with fewer splits than the full enumeration on some input.
  d = dssn_decide.dssn_decide(apply_fn, x, v, spec, [radius.max()], slots=64)
  np.testing.assert_array_equal(d.certified[:, 0], radius >= radius.max())
  assert d.splits.min() < spec.levels


def _table_classifier(table, batch):
  """Votes table[4 q xt] of the first pixel (q = 255): any vote sequence
  over the splits k, one compilation for every table (it is params)."""
  idx = jnp.round(batch.reshape(batch.shape[0], -1)[:, 0] * 4 * 255)
  return jax.nn.one_hot(table[idx.astype(jnp.int32)], 3)


def test_constructed_ties_equal_the_full_run():
  """Lookup-table classifiers over 3 classes at L = 8: many rows end in
  ties, and the early exit gives the full run's answers on all."""
  spec = dssn_jax.SmoothingSpec(8.5 / (2 * np.sqrt(3) * 255))
  assert spec.levels == 8
  v = np.array([0, 3], np.int32)
  x = (np.stack([np.arange(0, 256, 5), np.zeros(52)], 1) / 255).astype(
      np.float32
  )
  radii = np.arange(0, 6) / 255
  rng = np.random.default_rng(3)
  ties = 0
  for _ in range(12):
    table = jnp.asarray(rng.integers(0, 3, 4 * 255 + 1))
    counts = np.asarray(
        dssn.dssn_counts(_table_classifier, x, v, spec, params=table)
    )
    top2 = -np.sort(-counts, axis=1)[:, :2]
    ties += int((top2[:, 0] - top2[:, 1] <= 1).sum())
    pred, _, radius = dssn.certify_from_counts(counts, spec)
    d = dssn_decide.dssn_decide(
        _table_classifier,
        x,
        v,
        spec,
        radii,
        params=table,
        slots=5,
        pool_size=7,
    )
    np.testing.assert_array_equal(d.pred, pred)
    np.testing.assert_array_equal(d.certified, radius[:, None] >= radii[None])
  assert ties > 50


def test_certified_at_under_jit_equals_full_run():
  spec = dssn_jax.SmoothingSpec(0.5)
  shape = (6, 6, 1)
  rng = np.random.default_rng(5)
  x = (rng.integers(0, 256, (6,) + shape) / 255).astype(np.float32)
  v = dssn_jax.make_offsets(1, shape, spec.levels)
  apply_fn = _mlp(seed=7, scale=0.8)
  counts = np.asarray(dssn.dssn_counts(apply_fn, x, v, spec))
  pred, _, radius = dssn.certify_from_counts(counts, spec)
  eps = (0.0, float(np.median(radius)), 2.0)
  fn = jax.jit(
      lambda x, v: dssn_decide.dssn_certified_at(
          apply_fn, x, v, spec, eps, chunk_size=16
      )
  )
  for i in range(len(x)):
    p, cert, used = fn(jnp.asarray(x[i : i + 1]), jnp.asarray(v))
    assert int(p[0]) == pred[i]
    np.testing.assert_array_equal(
        np.asarray(cert[0]), radius[i] >= np.asarray(eps)
    )
    assert 0 < int(used) <= spec.levels
  # An invalid input (off the grid) gets no certificate under jit.
  bad = x[:1] + 0.3 / 255
  p, cert, _ = fn(jnp.asarray(bad), jnp.asarray(v))
  assert int(p[0]) == -1 and not np.asarray(cert).any()
  # One radius: a (B,) answer.
  _, one, _ = dssn_decide.dssn_certified_at(apply_fn, x[:2], v, spec, 0.0)
  assert np.asarray(one).shape == (2,)


@pytest.mark.slow
def test_early_exit_on_2_and_4_devices():
  result = run_python(
      ["-m", "tests.programs.early_exit_devices"], env=cpu_subprocess_env(4)
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report == {"checked": 5, "mismatches": []}


@pytest.mark.slow
def test_early_exit_on_the_smoke_trained_cnn(tmp_path, fashion_mnist_data_dir):
  """The trained smoke classifier on Fashion-MNIST test images, at every
  sigma of the study, at the study's radii and at the full run's radii."""
  config = fashion_mnist_config.get_config("smoke")
  config.data_dir = fashion_mnist_data_dir
  workdir = str(tmp_path / "run")
  classifier_training.train_and_evaluate(config, workdir)
  classifier = checkpoints.load_classifier(workdir)
  batch = next(
      eval_input.eval_dataset(
          "fashion_mnist",
          max_examples=4,
          batch_size=4,
          data_dir=fashion_mnist_data_dir,
      )
  )
  x = (np.asarray(batch["image"], np.float32) / 255).astype(np.float32)
  apply_fn, params = classifier.apply_fn, classifier.variables
  for sigma in STUDY_SIGMAS:
    spec = dssn_jax.SmoothingSpec(sigma)
    v = dssn_jax.make_offsets(0, x.shape[1:], spec.levels)
    counts = np.asarray(dssn.dssn_counts(apply_fn, x, v, spec, params=params))
    pred, _, radius = dssn.certify_from_counts(counts, spec)
    radii = np.unique(np.r_[config.certify.radii, radius, radius + 1 / 255])
    d = dssn_decide.dssn_decide(
        apply_fn, x, v, spec, radii, params=params, slots=256
    )
    np.testing.assert_array_equal(d.pred, pred)
    np.testing.assert_array_equal(d.certified, radius[:, None] >= radii[None])
