"""Deciding methods in runs and reports: dssn_early, uniform_seq, ssn_seq.

Their rows say what they decided (largest requested radius certified,
smallest refused, samples used) and agree with the full methods at the
requested radii; analyze knows nothing between them; a resume with other
radii is refused.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import fashion_mnist as fashion_mnist_config
import dssn_jax
from dssn_jax.core import methods
from dssn_jax.reports import tables
from dssn_jax.reports.certified_runs import CertifiedRun
from dssn_jax.runs import certify_batch
from dssn_jax.runs import certify_workdir
from dssn_jax.runs import decide_batch
from dssn_jax.runs import results_format
from dssn_jax.runs import results_reader
from dssn_jax.runs import run_files


class _Classifier:
  """The two fields certify_batch reads of a checkpoints.Classifier."""

  def __init__(self, seed=0, scale=1.5):
    w1 = jax.random.normal(jax.random.key(seed), (36, 16)) * scale
    w2 = jax.random.normal(jax.random.key(seed + 1), (16, 4))
    self.variables = {"w1": w1, "w2": w2}
    self.apply_fn = lambda p, x: (
        jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] - 1) @ p["w2"]
    )


def _config(method, **fields):
  cfg = ml_collections.ConfigDict(
      dict(
          method=method,
          chunk_size=-1,
          seed=0,
          n0=16,
          n=400,
          alpha=0.001,
          radii=(0.02, 0.05, 0.1, 0.3),
      )
  )
  cfg.update(fields)
  return cfg


def test_the_method_table_knows_the_deciding_methods():
  for name, noise in (
      ("dssn_early", "dssn"),
      ("uniform_seq", "uniform"),
      ("ssn_seq", "ssn"),
  ):
    m = methods.method(name)
    assert m.decides and m.noise_kind == noise
    assert {"samples", "radius_refused"} <= set(m.result_columns)
    assert set(results_format.columns_for(name)) <= (
        results_format.INT_COLUMNS | results_format.FLOAT_COLUMNS
    )
  assert "dssn_early" not in methods.NOISE_KINDS
  assert methods.RANDOMIZED_NOISE_KINDS == ("ssn", "uniform")
  with pytest.raises(ValueError):
    methods.by_reference_name("")


def test_dssn_early_rows_agree_with_dssn_at_the_requested_radii():
  spec = dssn_jax.SmoothingSpec(0.25)
  classifier = _Classifier()
  rng = np.random.default_rng(0)
  x = (rng.integers(0, 256, (9, 6, 6, 1)) / 255).astype(np.float32)
  v = dssn_jax.make_offsets(0, (6, 6, 1), spec.levels)
  index = np.arange(9)
  full = certify_batch.certify_batch(
      _config("dssn"), classifier, spec, v, x, index
  )
  cfg = _config("dssn_early")
  got = certify_batch.certify_batch(cfg, classifier, spec, v, x, index)
  radii = decide_batch.requested_radii(cfg)
  assert radii.tolist() == [0.0, 0.02, 0.05, 0.1, 0.3]
  np.testing.assert_array_equal(got["predict"], full["predict"])
  for r in radii:
    np.testing.assert_array_equal(got["radius"] >= r, full["radius"] >= r)
    np.testing.assert_array_equal(
        got["radius_refused"] <= r, full["radius"] < r
    )
  assert set(got["radius"]) <= set(radii)  # Never a radius between them.
  assert (got["samples"] <= spec.levels).all()
  assert (got["count_top"] + got["count_runner_up"] <= got["samples"]).all()


def test_uniform_seq_with_one_look_is_the_fixed_n_run():
  spec = dssn_jax.SmoothingSpec(0.5)
  classifier = _Classifier(3, 0.5)
  x = np.random.default_rng(1).random((6, 6, 6, 1), np.float32)
  index = np.arange(6) + 20
  full = certify_batch.certify_batch(
      _config("uniform"), classifier, spec, None, x, index
  )
  cfg = _config("uniform_seq", first_look=400)
  got = certify_batch.certify_batch(cfg, classifier, spec, None, x, index)
  np.testing.assert_array_equal(got["predict"], full["predict"])
  np.testing.assert_array_equal(got["p_lower"], full["p_lower"])
  for r in decide_batch.requested_radii(cfg):
    np.testing.assert_array_equal(
        got["radius"] >= r, (full["radius"] >= r) & (full["predict"] >= 0)
    )
  assert (got["samples"] == 400).all()


def _run(method, radii, radius, correct):
  return CertifiedRun(
      name="x",
      dataset="fashion_mnist",
      method=method,
      sigma=0.5,
      stabilized=False,
      results={
          "idx": np.arange(len(radius)),
          "radius": np.asarray(radius, float),
          "correct": np.asarray(correct, bool),
          "predict": np.zeros(len(radius), int),
      },
      metadata={"radii": list(radii)},
  )


def test_analysis_knows_nothing_between_requested_radii():
  run = _run("dssn_early", [0.0, 0.5, 1.0], [0.5, 1.0, 0.0, 0.5], [1, 1, 1, 0])
  acc = run.certified_accuracy([0.0, 0.25, 0.5, 1.0, 2.0])
  np.testing.assert_array_equal(acc[[0, 2, 3]], [0.75, 0.5, 0.25])
  assert np.isnan(acc[[1, 4]]).all()
  table = tables.certified_accuracy_markdown([run], (0.25, 0.5))
  assert "| n/a | 50.00 |" in table
  best = tables.best_over_sigma([run], (0.5, 0.75))
  assert best[0].accuracy == 0.5 and best[1].run is None
  # A full run still answers everywhere.
  full = _run("dssn", [], [0.5, 1.0, 0.0, 0.5], [1, 1, 1, 0])
  assert not np.isnan(full.certified_accuracy([0.25, 2.0])).any()


@pytest.mark.slow
def test_dssn_early_run_and_resume_with_other_radii_refused(
    tmp_path, fashion_mnist_data_dir
):
  from tests.certify_workdir_test import save_untrained_checkpoint  # pylint: disable=g-import-not-at-top

  config = fashion_mnist_config.get_config("smoke")
  config.data_dir = fashion_mnist_data_dir
  config.certify.update(method="dssn_early", max_examples=4, radii=(0.5, 1.0))
  workdir = str(tmp_path / "run")
  save_untrained_checkpoint(config, workdir)
  certify_workdir.certify_workdir(config, workdir)
  rows = results_reader.read_results(
      run_files.results_path(workdir, config.certify)
  )
  assert rows["idx"].size == 4 and set(rows["radius"]) <= {0.0, 0.5, 1.0}
  assert (rows["samples"] <= dssn_jax.SmoothingSpec(config.sigma).levels).all()
  config.certify.radii = (0.5, 2.0)
  config.certify.max_examples = 6
  with pytest.raises(ValueError, match="radii"):
    certify_workdir.certify_workdir(config, workdir)
