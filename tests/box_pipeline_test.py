"""The top-2 and box-constrained certificates through results files and
analyze: recorded columns, their row checks, three table rows per randomized
run, and files written before the columns existed."""

import json
import math

import numpy as np
import pytest

from dssn_jax.core import box
from dssn_jax.core import clopper_pearson
from dssn_jax.core import methods
from dssn_jax.reports import analyze
from dssn_jax.reports import certified_runs
from dssn_jax.runs import results_format
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from dssn_jax.runs.results_writer import ResultsWriter
from tests.randomized_rows import top2_columns

N, ALPHA, SIGMA = 1000, 0.001, 1.0
LAM = SIGMA * math.sqrt(3)
RUN = {"sigma": SIGMA, "dataset": "cifar10", "n": N, "alpha": ALPHA, "n0": 64}
# Votes of the selected class (class 0, the label) out of N: certified by
# all three, by top-2 and box only (p_lower <= 1/2 < p_a - p_b), by none.
COUNTS = np.array([1000, 990, 950, 900, 700, 480, 300])


def _inputs(rows: int) -> np.ndarray:
  """Images of 12 pixels: at 0 and 1 (reach 1) and mid-grey (reach 0.5)."""
  x = np.full((rows, 12), 0.5)
  x[:, :2] = 0.0
  x[:, 2:4] = 1.0
  return x


def _randomized_rows(counts, x):
  p_lower = clopper_pearson.clopper_pearson_lower(counts, N, ALPHA)
  predict = np.where(p_lower > 0.5, 0, -1)
  return {
      "idx": np.arange(counts.size),
      "label": np.zeros(counts.size, int),
      "predict": predict,
      "radius": 2 * LAM * (p_lower - 0.5),
      "correct": predict == 0,
      "time": np.full(counts.size, 0.1),
      "p_lower": p_lower,
      **top2_columns(
          counts,
          0,
          n=N,
          alpha=ALPHA,
          lam=LAM,
          x=x,
          count_runner_up=(N - counts) // 2,  # The rest to a third class.
      ),
  }


def _legacy_file(path, rows):
  """A uniform results file as versions before the top-2 and box columns
  wrote it: p_lower alone, a format version 1 sidecar (no digest)."""
  columns = results_format.legacy_columns_for("uniform")[0]
  assert columns == results_format.BASE_COLUMNS + ("p_lower",)
  lines = [results_format.header(columns).decode()]
  for i in range(rows["idx"].size):
    row = {c: rows[c][i] for c in columns}
    lines.append(
        results_format.format_row(results_format.check_row(row, columns))
    )
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(lines))
  results_metadata.metadata_path(path).write_text(
      json.dumps(
          {
              "format_version": 1,
              "method": "uniform",
              "columns": list(columns),
              "run": RUN,
          }
      )
  )


def test_randomized_columns_hold_the_three_certificates(tmp_path):
  x = _inputs(COUNTS.size)
  rows = _randomized_rows(COUNTS, x)
  path = tmp_path / "certify_uniform.tsv"
  with ResultsWriter(path, "uniform", RUN) as writer:
    writer.write_rows(rows)
  out = results_reader.read_results(path)
  assert tuple(out) == results_format.columns_for("uniform")
  p_a, p_b = box.joint_bounds(COUNTS, (N - COUNTS) // 2, N, ALPHA)
  np.testing.assert_array_equal(out["p_lower"], p_a)
  np.testing.assert_array_equal(out["p_b_upper"], p_b)
  np.testing.assert_array_equal(
      out["radius_top2"], box.top2_radius(p_a, p_b, LAM)
  )
  np.testing.assert_array_equal(
      out["radius_box"], box.box_radius(x, p_a, p_b, LAM)
  )
  # Each improvement shows on these rows: top-2 certifies where the paper's
  # certificate abstains, and the box raises radii.
  assert ((out["predict"] == -1) & (out["predict_top2"] == 0)).any()
  assert (out["radius_top2"] >= np.maximum(out["radius"], 0)).all()
  assert (out["radius_top2"][1:-1] > np.maximum(out["radius"], 0)[1:-1]).all()
  assert (out["radius_box"][:4] > out["radius_top2"][:4]).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(predict_top2=1), "both certify the class selected"),
        (dict(p_b_upper=0.5), "must be in \\[0, 1 - p_lower\\]"),
        (dict(radius_box=0.1), "radius_top2 <= radius_box"),
        (dict(radius_box=math.nan), "finite number"),
        (dict(radius_box=-math.inf), "finite number"),
        (dict(count_runner_up=-1), "counts must be >= 0"),
    ],
)
def test_inconsistent_top2_columns_are_refused(change, message):
  rows = _randomized_rows(COUNTS[3:4], _inputs(1))
  row = {k: v[0] for k, v in rows.items()}
  columns = results_format.columns_for("uniform")
  results_format.check_row(row, columns)  # The row itself is valid.
  with pytest.raises(ValueError, match=message):
    results_format.check_row({**row, **change}, columns)
  abstains = {
      k: v[0] for k, v in _randomized_rows(COUNTS[-1:], _inputs(1)).items()
  }
  with pytest.raises(ValueError, match="radii of an abstention"):
    results_format.check_row({**abstains, "radius_top2": 0.5}, columns)


def test_analyze_tabulates_and_plots_the_three_certificates(tmp_path):
  rows = _randomized_rows(COUNTS, _inputs(COUNTS.size))
  with ResultsWriter(
      tmp_path / "u" / "certify_uniform.tsv", "uniform", RUN
  ) as w:
    w.write_rows(rows)
  md = analyze.analyze(
      results=[str(tmp_path / "u")],
      outdir=tmp_path / "out",
      radii=(0.5, 2.0),
      what_if_n=100_000,
  )
  table1 = md.split("### Certified accuracy per run")[0]
  labels = [c.label for c in methods.method("uniform").certificates]
  assert labels == [
      "Uniform additive noise (Yang et al. 2020)",
      "Uniform additive noise, top-2",
      "Uniform additive noise, box-constrained (Voracek & Hein 2023)",
  ]
  for label, kind in zip(labels, ("paper", "top2", "box")):
    cert = methods.method("uniform").certificate(kind)
    clean, *acc = results_reader.certified_accuracy(
        rows[cert.radius_column],
        rows[cert.predict_column] == rows["label"],
        [0.0, 0.5, 2.0],
        predict=rows[cert.predict_column],
    )
    cells = [
        f"{100 * a:.2f}% ({100 * clean:.2f}% @ σ=1.0)" if a else "0.00%"
        for a in acc
    ]
    assert f"| {label} (σ = 1.0) | " + " | ".join(cells) + " |" in table1
  assert "Voracek & Hein 2023: top-2 bounds" in md  # The note on the three.
  assert "Written before" not in md
  per_run = md.split("### Certified accuracy per run")[1].split("###")[0]
  for name in (
      "cifar_uniform_1.0 ",
      "cifar_uniform_1.0_top2",
      "cifar_uniform_1.0_box",
  ):
    assert f"| {name}" in per_run
  # Seconds and the what-if estimate: the paper's certificate alone.
  what_if = md.split("### Randomized runs at N = 100,000")[1].split("###")[0]
  assert "top-2" not in what_if and "box" not in what_if
  assert "top-2" not in md.split("### Seconds per image")[1].split("###")[0]
  for stem in ("uniform", "uniform_top2", "uniform_box"):
    assert (tmp_path / "out" / f"certified_cifar_ours_{stem}.png").exists()


def test_files_without_the_columns_still_read_and_analyze(tmp_path):
  rows = _randomized_rows(COUNTS, _inputs(COUNTS.size))
  path = tmp_path / "old" / "certify_uniform.tsv"
  _legacy_file(path, rows)
  out = results_reader.read_results(path)
  assert tuple(out) == results_format.BASE_COLUMNS + ("p_lower",)
  np.testing.assert_array_equal(out["p_lower"], rows["p_lower"])
  run = certified_runs.load_result_runs([path])["cifar_uniform_1.0"]
  assert certified_runs.lacks_variants(run)
  assert certified_runs.certificate_variants(run) == []
  md = analyze.analyze(
      results=[str(path)], outdir=tmp_path / "out", radii=(0.5,)
  )
  assert "| Uniform additive noise (Yang et al. 2020) (σ = 1.0) |" in md
  assert "| Uniform additive noise, top-2" not in md
  assert "cifar_uniform_1.0_top2" not in md
  assert "box-constrained (Voracek" not in md
  assert "so shown with the paper's certificate only: cifar_uniform_1.0." in md
  # A run cannot append rows with the new columns to it.
  with pytest.raises(ValueError, match="written by an earlier dssn-jax"):
    ResultsWriter(path, "uniform", RUN).open()
