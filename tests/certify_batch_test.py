"""runs.certify_batch, the one method dispatch, against the public API called
directly (an oracle independent of the dispatch), for every method."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import dssn_jax
from dssn_jax.core import methods
from dssn_jax.runs import certify_batch
from dssn_jax.training import checkpoints

_SHAPE = (6, 6, 1)
_CLASSES = 4


def _apply(variables, x):
  """A fixed nonlinear classifier: (B, 6, 6, 1) in [0, 1] -> (B, 4)."""
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w1"])
  return h @ variables["w2"]


@pytest.fixture(name="classifier")
def fixture_classifier():
  k1, k2 = jax.random.split(jax.random.key(3))
  variables = {
      "w1": jax.random.normal(k1, (36, 16)) * 2.0,
      "w2": jax.random.normal(k2, (16, _CLASSES)),
  }
  spec = dssn_jax.SmoothingSpec(sigma=0.1, q=255)
  return checkpoints.Classifier(
      apply_fn=_apply,
      variables=variables,
      spec=spec,
      offsets=dssn_jax.make_offsets(5, _SHAPE, spec.levels),
      metadata={},
      step=0,
  )


def _config(method):
  return ml_collections.ConfigDict(
      dict(method=method, chunk_size=-1, seed=7, n0=16, n=64, alpha=0.001)
  )


def _images():
  rng = np.random.RandomState(0)
  return rng.randint(0, 256, (5,) + _SHAPE).astype(np.uint8)


@pytest.mark.parametrize(
    "method", [m for m in methods.METHODS if not methods.method(m).decides]
)
def test_certify_batch_equals_the_public_api(classifier, method):
  images = _images()
  index = np.arange(100, 105)
  x = certify_batch.to_inputs(images)
  np.testing.assert_array_equal(x * 255, images)  # On the grid, exactly.
  got = certify_batch.certify_batch(
      _config(method),
      classifier,
      classifier.spec,
      classifier.offsets,
      x,
      index,
  )
  assert set(got) == {"predict", "radius"} | set(
      methods.method(method).result_columns
  )
  if method == "dssn":  # The oracle: each method's own public function.
    counts = np.asarray(
        dssn_jax.dssn_counts(
            _apply,
            jnp.asarray(x),
            classifier.offsets,
            classifier.spec,
            params=classifier.variables,
        )
    )
    pred, steps, radius = dssn_jax.certify_from_counts(counts, classifier.spec)
    np.testing.assert_array_equal(got["steps"], steps)
    np.testing.assert_array_equal(got["count_top"], counts.max(axis=1))
    np.testing.assert_array_equal(
        got["count_runner_up"], np.sort(counts, axis=1)[:, -2]
    )
  else:
    cert = dssn_jax.certify_randomized(
        _apply,
        jnp.asarray(x),
        classifier.spec,
        jax.random.key(7),
        noise=method,
        n0=16,
        n=64,
        alpha=0.001,
        params=classifier.variables,
        row_ids=index,
    )
    pred, radius = cert.pred, cert.radius
    np.testing.assert_array_equal(got["p_lower"], cert.p_lower)
    # The full counts of the n draws and the selected class come back; the
    # top-2 and box columns are core/box.py on them and on x.
    assert cert.counts.shape == (5, _CLASSES)
    assert (cert.counts.sum(axis=1) == 64).all()
    np.testing.assert_array_equal(
        cert.count_top, cert.counts[np.arange(5), cert.selected]
    )
    np.testing.assert_array_equal(pred[pred >= 0], cert.selected[pred >= 0])
    top2 = dssn_jax.certify_box(
        cert.counts,
        cert.selected,
        x,
        n=64,
        alpha=0.001,
        lam=classifier.spec.lam,
    )
    count_a, count_b = dssn_jax.top_two_counts(cert.counts, cert.selected)
    np.testing.assert_array_equal(got["count_top"], count_a)
    np.testing.assert_array_equal(got["count_runner_up"], count_b)
    np.testing.assert_array_equal(got["predict_top2"], top2.pred)
    np.testing.assert_array_equal(got["p_b_upper"], top2.p_b_upper)
    np.testing.assert_array_equal(got["radius_top2"], top2.radius_top2)
    np.testing.assert_array_equal(got["radius_box"], top2.radius_box)
    np.testing.assert_array_equal(top2.p_a_lower, cert.p_lower)
    assert (got["radius_box"] >= got["radius_top2"]).all()
    assert (got["radius_top2"] >= np.maximum(cert.radius, 0)).all()
  np.testing.assert_array_equal(got["predict"], pred)
  np.testing.assert_array_equal(got["radius"], radius)


@pytest.mark.parametrize(
    "method", [m for m in methods.METHODS if methods.method(m).decides]
)
def test_deciding_methods_answer_as_the_public_api_at_their_radii(
    classifier, method
):
  """A deciding method's rows against the full certificate of the public
  API at the requested radii (with n = 64 < the first look, the sequential
  run has one look: the fixed-N certificate)."""
  x = certify_batch.to_inputs(_images())
  index = np.arange(100, 105)
  cfg = _config(method)
  cfg.radii = (0.01, 0.02, 0.05)
  got = certify_batch.certify_batch(
      cfg, classifier, classifier.spec, classifier.offsets, x, index
  )
  assert set(got) == {"predict", "radius"} | set(
      methods.method(method).result_columns
  )
  if methods.method(method).exact:
    counts = np.asarray(
        dssn_jax.dssn_counts(
            _apply,
            jnp.asarray(x),
            classifier.offsets,
            classifier.spec,
            params=classifier.variables,
        )
    )
    pred, _, radius = dssn_jax.certify_from_counts(counts, classifier.spec)
  else:
    cert = dssn_jax.certify_randomized(
        _apply,
        jnp.asarray(x),
        classifier.spec,
        jax.random.key(7),
        noise=methods.method(method).noise_kind,
        n0=16,
        n=64,
        alpha=0.001,
        params=classifier.variables,
        row_ids=index,
    )
    pred, radius = cert.pred, cert.radius
    np.testing.assert_array_equal(got["p_lower"], cert.p_lower)
    assert (got["samples"] == 64).all()
  np.testing.assert_array_equal(got["predict"], pred)
  for r in (0.0, 0.01, 0.02, 0.05):
    np.testing.assert_array_equal(
        got["radius"] >= r, (radius >= r) & (pred >= 0)
    )
    np.testing.assert_array_equal(
        got["radius_refused"] <= r, ~((radius >= r) & (pred >= 0))
    )


def test_forward_passes_per_image(classifier):
  spec = classifier.spec
  assert certify_batch.forward_passes_per_image(_config("dssn"), spec) == (
      spec.levels
  )
  assert certify_batch.forward_passes_per_image(_config("uniform"), spec) == (
      16 + 64
  )
