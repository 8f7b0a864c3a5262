"""reports/sample_size.py: a randomized run at two sample sizes, image for
image."""

import math

import numpy as np
import pytest

from dssn_jax.core import clopper_pearson
from dssn_jax.reports import sample_size
from dssn_jax.runs import results_writer
from tests.conftest import run_python
from tests.randomized_rows import top2_columns

ALPHA = 0.001


def _write_run(path, *, n, successes, sigma=0.5, skip=100, step=100):
  """A uniform run with the given top-class counts out of n (class 3) on
  test images 0, skip, 2 skip, ..."""
  successes = np.asarray(successes)
  idx = np.arange(successes.size) * skip
  label = np.full(successes.size, 3)
  p_lower = clopper_pearson.clopper_pearson_lower(successes, n, ALPHA)
  radius = 2 * math.sqrt(3) * sigma * (p_lower - 0.5)
  predict = np.where(radius >= 0, 3, -1)
  meta = {
      "method": "uniform",
      "sigma": sigma,
      "alpha": ALPHA,
      "n0": 64,
      "n": n,
      "seed": 0,
      "checkpoint_step": step,
      "skip": skip,
      "start": 0,
      "max_examples": int(successes.size),
  }
  with results_writer.ResultsWriter(path, "uniform", meta) as w:
    w.write_rows(
        {
            "idx": idx,
            "label": label,
            "predict": predict,
            "radius": radius,
            "correct": predict == label,
            "time": np.full(idx.size, 0.1),
            "p_lower": p_lower,
            **top2_columns(
                successes, 3, n=n, alpha=ALPHA, lam=math.sqrt(3) * sigma
            ),
        }
    )


# Frequencies 1.0, 0.9, 0.6, 0.51 and 0.3 of the top class.
SMALL = [500, 450, 300, 255, 150]


def test_estimate_equals_the_large_run_at_the_same_frequencies(tmp_path):
  _write_run(tmp_path / "small.tsv", n=500, successes=SMALL)
  _write_run(
      tmp_path / "large.tsv", n=100_000, successes=[200 * k for k in SMALL]
  )
  c = sample_size.compare(tmp_path / "small.tsv", tmp_path / "large.tsv")
  np.testing.assert_allclose(c.radius_estimate, c.radius_large, atol=1e-9)
  # At N = 500, 0.51 abstains; at 100,000 it certifies (just).
  assert c.radius_small[3] < 0 < c.radius_large[3]
  assert c.radius_large[4] < 0  # Below 1/2: abstains at any N.
  agreement = sample_size.agreement(c)
  assert agreement["both_certify"] == 4 and agreement["max_abs_gap"] < 1e-9
  assert c.certified(c.radius_large, 0.0).tolist() == [1, 1, 1, 1, 0]
  markdown = sample_size.report_markdown([c], [0.0, 0.5])
  assert "| 0.5 | N = 500 | 60 | 40 |" in markdown
  assert "| 0.5 | N = 100,000, certified | 80 | 40 |" in markdown
  # idx 300 at N = 500; idx 400 at N = 500, estimated and at 100,000.
  assert markdown.count("abstain") == 4


def test_other_images_or_classifier_are_refused(tmp_path):
  _write_run(tmp_path / "small.tsv", n=500, successes=SMALL)
  _write_run(
      tmp_path / "other_images.tsv",
      n=100_000,
      successes=SMALL,
      skip=10,
  )
  with pytest.raises(ValueError, match="other images"):
    sample_size.compare(tmp_path / "small.tsv", tmp_path / "other_images.tsv")
  _write_run(tmp_path / "other_step.tsv", n=100_000, successes=SMALL, step=7)
  with pytest.raises(ValueError, match="checkpoint_step"):
    sample_size.compare(tmp_path / "small.tsv", tmp_path / "other_step.tsv")


@pytest.mark.slow
def test_cli_writes_the_report(tmp_path):
  for sigma in (1.0, 0.5):
    run = tmp_path / "runs" / f"uniform_{sigma:g}"
    _write_run(
        run / "certify_uniform_n500.tsv", n=500, successes=SMALL, sigma=sigma
    )
    _write_run(
        run / "certify_uniform.tsv",
        n=100_000,
        successes=[200 * k for k in SMALL],
        sigma=sigma,
    )
  out = tmp_path / "full_n.md"
  done = run_python(
      [
          "-m",
          "experiments.sample_size_table",
          f"--results={tmp_path / 'runs'}",
          f"--out={out}",
      ]
  )
  assert done.returncode == 0, done.stderr
  text = out.read_text()
  assert text.index("### sigma = 0.5") < text.index("### sigma = 1")
  missing = run_python(
      [
          "-m",
          "experiments.sample_size_table",
          f"--results={tmp_path / 'nothing'}",
          f"--out={out}",
      ]
  )
  assert missing.returncode == 1
  assert missing.stderr.strip().count("\n") == 0, missing.stderr
  assert missing.stderr.startswith("error:")


def test_exact_run_row_on_the_same_images(tmp_path):
  _write_run(tmp_path / "small.tsv", n=500, successes=SMALL)
  _write_run(
      tmp_path / "large.tsv", n=100_000, successes=[200 * k for k in SMALL]
  )
  c = sample_size.compare(tmp_path / "small.tsv", tmp_path / "large.tsv")
  # An exact run on every 50th image (a superset): radii 0.1 .. 1.0, one
  # image misclassified.
  idx = np.arange(10) * 50
  radius = np.linspace(0.1, 1.0, 10)
  label = np.full(10, 3)
  predict = np.where(idx == 100, 2, 3)
  with results_writer.ResultsWriter(
      tmp_path / "dssn.tsv", "dssn", {"sigma": 0.5, "skip": 50, "start": 0}
  ) as w:
    w.write_rows(
        {
            "idx": idx,
            "label": label,
            "predict": predict,
            "radius": radius,
            "correct": predict == label,
            "time": np.full(10, 0.1),
            "steps": np.round(radius * 255).astype(int),
            # Counts that give these steps (results_format checks the rule).
            "count_top": 41 + 2 * np.round(radius * 255).astype(int),
            "count_runner_up": np.full(10, 41),
        }
    )
  exact = sample_size.load_exact(tmp_path / "dssn.tsv")
  table = sample_size.summary_markdown([c], [0.0, 0.5], [exact])
  # Images 0, 100 (wrong), 200, 300, 400: radii 0.1, -, 0.5, 0.7, 0.9.
  assert "| 0.5 | DSSN (exact), same images | 80 | 60 |" in table
  with pytest.raises(ValueError, match="not an exact"):
    sample_size.load_exact(tmp_path / "small.tsv")
  with pytest.raises(ValueError, match="dssn certificates are exact"):
    sample_size.compare(tmp_path / "dssn.tsv", tmp_path / "dssn.tsv")
  exact_elsewhere = sample_size.ExactRun(0.5, idx + 1, radius)
  with pytest.raises(ValueError, match="lacks images"):
    sample_size.summary_markdown([c], [0.0], [exact_elsewhere])
