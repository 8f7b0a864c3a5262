"""Certified-accuracy tables and plots (dssn_jax/reports/), end to end.

Every code path runs on a small synthetic archive of published certificates
written in tmp_path (`write_synthetic_reference`), with tables whose numbers
are worked out below. The authors' real certificates
(levine_feizi_2021_certificates.npz and levine_feizi_2021_runs.json) cannot
be part of the repository (their licence forbids redistribution); the tests
that check the paper's Table 1 against them read the directory named by
$DSSN_JAX_REFERENCE_RESULTS, else reference_results/ of this checkout (where
README's `experiments.build_reference` command puts them), and are skipped
without them.
"""

import json
import os
from pathlib import Path
import textwrap
import tracemalloc

import numpy as np
import pytest

from dssn_jax.core import clopper_pearson
from dssn_jax.reports import analyze
from dssn_jax.reports import estimate
from dssn_jax.reports import reference_archive
from dssn_jax.reports import tables
from dssn_jax.runs import results_writer
from tests.conftest import REPO_ROOT
from tests.conftest import run_python
from tests.randomized_rows import top2_columns

REFERENCE_ENV = "DSSN_JAX_REFERENCE_RESULTS"


def _published_reference() -> Path | None:
  """The directory of the authors' real certificates, or None."""
  if os.environ.get(REFERENCE_ENV):
    return Path(os.environ[REFERENCE_ENV])
  local = REPO_ROOT / "reference_results"
  return local if local.is_dir() else None


REFERENCE = _published_reference()
_NO_REFERENCE = (
    f"the authors' published certificates are not here: set {REFERENCE_ENV} "
    "to the directory `python -m experiments.build_reference` wrote (see "
    "README), or build them into reference_results/; the synthetic-archive "
    "tests run the same code"
)
requires_reference = pytest.mark.skipif(REFERENCE is None, reason=_NO_REFERENCE)

RADII = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
CIFAR_SIGMAS = (0.15, 0.25) + tuple(0.25 * n for n in range(2, 15))

# ---------------------------------------------------------------------------
# A synthetic archive of published certificates.

# Run -> (which of the images are misclassified, radius per image). Ten CIFAR
# images with labels 0..9, five ImageNet ones; a negative radius is an
# abstention of a randomized run, whose `predicted` is still its top class.
SYNTHETIC_RUNS = {
    "cifar_split_derandomized_0.25": ([9], [0.6] * 10),
    "cifar_split_derandomized_0.5": ([8, 9], [1.2] * 6 + [0.3] * 4),
    "cifar_split_derandomized_1.0": ([7, 8, 9], [2.5] * 3 + [0.4] * 7),
    "cifar_split_derandomized_0.5_stabilized": ([], [1.0] * 10),
    "cifar_uniform_0.5": ([], [1.5] * 4 + [0.2] * 3 + [-0.1] * 3),
    "cifar_uniform_1.0": ([9], [1.1] * 4 + [-0.5] * 6),
    "cifar_split_0.5": ([0], [0.7] * 10),
    "imagenet_uniform_2.0": ([], [0.5] * 5),
}
SYNTHETIC_SECONDS = {
    "cifar_split_derandomized_0.25": 0.0123,
    "cifar_split_derandomized_0.5": 0.0246,
    "cifar_split_derandomized_1.0": 0.0491,
    "cifar_uniform_0.5": 13.1,
}
SYNTHETIC_RADII = (0.5, 1.0, 2.0, 4.0)
# Best certified accuracy (%) over sigma at SYNTHETIC_RADII, and its sigma:
# DSSN's best moves from sigma 0.25 to 0.5 to 1.0 as the radius grows; the
# two uniform runs tie at r = 0.5 and 1 (the smaller sigma wins); nothing
# reaches r = 4 (sigma None).
SYNTHETIC_TABLE1 = {
    ("dssn", False): ([90.0, 60.0, 30.0, 0.0], [0.25, 0.5, 1.0, None]),
    ("uniform", False): ([40.0, 40.0, 0.0, 0.0], [0.5, 0.5, None, None]),
}


def write_synthetic_reference(directory: Path) -> Path:
  """SYNTHETIC_RUNS as build_reference_archive writes them; the directory."""
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {
      "cifar__labels": np.arange(10, dtype=np.int16),
      "imagenet__labels": np.arange(5, dtype=np.int16),
  }
  runs = {}
  for name, (wrong, radius) in SYNTHETIC_RUNS.items():
    labels = arrays[name.split("_")[0] + "__labels"]
    predicted = labels.copy()
    predicted[wrong] = (predicted[wrong] + 1) % 10
    arrays[f"{name}__predicted"] = predicted
    arrays[f"{name}__radius_l1"] = np.asarray(radius, np.float64)
    runs[name] = {"images": len(radius)}
    if name in SYNTHETIC_SECONDS:
      runs[name]["seconds_per_image"] = SYNTHETIC_SECONDS[name]
  np.savez_compressed(directory / reference_archive.ARCHIVE_NAME, **arrays)
  (directory / reference_archive.RUNS_NAME).write_text(json.dumps(runs))
  return directory


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory):
  directory = write_synthetic_reference(tmp_path_factory.mktemp("reference"))
  return reference_archive.load_reference_runs(directory)


@pytest.fixture(scope="module")
def reference_runs():
  """The authors' real certificates (the tests using them skip without)."""
  if REFERENCE is None:
    pytest.skip(_NO_REFERENCE)
  if not REFERENCE.is_dir():
    pytest.fail(f"${REFERENCE_ENV}={REFERENCE} is not a directory.")
  return reference_archive.load_reference_runs(
      REFERENCE / reference_archive.ARCHIVE_NAME
  )


def cifar_runs(runs, method, stabilized, sigmas=CIFAR_SIGMAS):
  selected = [
      r
      for r in runs.values()
      if r.dataset == "cifar"
      and r.method == method
      and r.stabilized == stabilized
      and r.sigma in sigmas
  ]
  assert sorted(r.sigma for r in selected) == sorted(sigmas)
  return selected


def percent(best):
  return [round(100 * b.accuracy, 2) for b in best]


# ---------------------------------------------------------------------------
# The synthetic archive: every code path, numbers worked out by hand.


def test_synthetic_runs_are_parsed(synthetic_runs):
  assert sorted(synthetic_runs) == sorted(SYNTHETIC_RUNS)
  run = synthetic_runs["cifar_split_derandomized_0.5_stabilized"]
  assert (run.dataset, run.method, run.sigma, run.stabilized) == (
      "cifar",
      "dssn",
      0.5,
      True,
  )
  assert run.num_images == 10 and run.source == "reference"
  assert run.seconds_per_image is None  # Not in the runs .json.
  assert synthetic_runs["cifar_split_0.5"].method == "ssn"
  assert synthetic_runs["imagenet_uniform_2.0"].num_images == 5
  assert synthetic_runs["cifar_uniform_0.5"].seconds_per_image == 13.1
  with pytest.raises(ValueError, match="split_derandomized,split,uniform"):
    reference_archive.parse_reference_run_name("cifar_gaussian_0.5")


@pytest.mark.parametrize("method,stabilized", sorted(SYNTHETIC_TABLE1))
def test_synthetic_table1(synthetic_runs, method, stabilized):
  sigmas = {"dssn": (0.25, 0.5, 1.0), "uniform": (0.5, 1.0)}[method]
  best = tables.best_over_sigma(
      cifar_runs(synthetic_runs, method, stabilized, sigmas), SYNTHETIC_RADII
  )
  expected_pct, expected_sigma = SYNTHETIC_TABLE1[(method, stabilized)]
  assert percent(best) == expected_pct
  assert [b.sigma for b in best] == expected_sigma


def test_synthetic_clean_accuracies(synthetic_runs):
  dssn = cifar_runs(synthetic_runs, "dssn", False, (0.25, 0.5, 1.0))
  best = tables.best_over_sigma(dssn, SYNTHETIC_RADII[:3])
  # DSSN never abstains: certified accuracy at r = 0 is the clean accuracy.
  assert [round(100 * b.clean_accuracy, 2) for b in best] == [90, 80, 70]
  # The top class of an abstention counts in the paper's clean accuracy of a
  # randomized run (mean of predict == label), never at r = 0.
  uniform = cifar_runs(synthetic_runs, "uniform", False, (0.5, 1.0))
  (best,) = tables.best_over_sigma(uniform, (0.5,))
  top_class = synthetic_runs["cifar_uniform_0.5"].results["correct"].mean()
  assert (best.clean_accuracy, top_class) == (0.7, 1.0)


def test_synthetic_best_over_fewer_sigmas(synthetic_runs):
  """Leaving a sigma out changes exactly the cells it won."""
  all3 = tables.best_over_sigma(
      cifar_runs(synthetic_runs, "dssn", False, (0.25, 0.5, 1.0)),
      SYNTHETIC_RADII,
  )
  two = tables.best_over_sigma(
      cifar_runs(synthetic_runs, "dssn", False, (0.25, 1.0)), SYNTHETIC_RADII
  )
  assert percent(two) == [90.0, 30.0, 30.0, 0.0]
  differ = [
      r
      for r, a, b in zip(SYNTHETIC_RADII, percent(all3), percent(two))
      if a != b
  ]
  assert differ == [1.0]


def test_synthetic_markdown_table1(synthetic_runs):
  runs = [r for r in synthetic_runs.values() if r.dataset == "cifar"]
  table = tables.table1_markdown(runs, SYNTHETIC_RADII)
  assert (
      "| DSSN (3 σ in [0.25, 1.0]) | 90.00% (90.00% @ σ=0.25) | "
      "60.00% (80.00% @ σ=0.5) | 30.00% (70.00% @ σ=1.0) | 0.00% |"
  ) in table
  assert (
      "| Uniform additive noise (Yang et al. 2020) (2 σ in [0.5, 1.0]) | "
      "40.00% (70.00% @ σ=0.5) | 40.00% (70.00% @ σ=0.5) | 0.00% | 0.00% |"
  ) in table
  assert "| DSSN +stability training (σ = 0.5) | 100.00% (100.00%" in table
  seconds = tables.seconds_per_image_markdown(runs)
  assert "| 0.25 | 0.0123 |" in seconds
  assert "| 0.5 | 0.0246 |" in seconds and "| 13.1 |" in seconds


# ---------------------------------------------------------------------------
# The authors' real certificates: the paper's Table 1.

# The paper's Table 1 (CIFAR-10, best over the 15 sigmas), as printed in the
# seed paper: best certified accuracy, and the sigma of the run achieving it.
PAPER_TABLE1 = {
    ("dssn", False): (
        [72.25, 63.07, 56.21, 51.33, 46.76, 42.66, 38.26, 33.64],
        [0.75, 1.25, 2.25, 3.0, 3.5, 3.5, 3.5, 3.5],
    ),
    ("uniform", False): (
        [70.54, 58.43, 50.73, 43.16, 33.24, 25.98, 20.66, 17.12],
        [0.5, 1.0, 1.75, 1.75, 2.0, 2.5, 3.5, 3.5],
    ),
    ("dssn", True): (
        [71.23, 61.04, 54.21, 49.39, 45.45, 42.67, 39.46, 36.46],
        [0.5, 1.0, 1.5, 1.75, 2.5, 3.0, 3.25, 3.5],
    ),
    ("uniform", True): (
        [71.09, 60.36, 52.86, 47.08, 42.26, 38.55, 33.76, 27.12],
        [0.5, 0.75, 1.5, 1.75, 2.5, 2.5, 2.5, 2.5],
    ),
}
# The paper's clean accuracies (in parentheses in Table 1) of those runs.
PAPER_CLEAN_DSSN = [81.50, 77.85, 71.17, 67.98, 65.40, 65.40, 65.40, 65.40]
PAPER_CLEAN_UNIFORM = [83.97, 78.70, 73.05, 73.05, 69.56, 62.48, 53.38, 53.38]

# Best over sigma (CIFAR-10, no stability training) as quoted in the README
# that came with a repacking of these certificates: see the test below.
README_DSSN = [72.25, 63.07, 56.21, 51.04, 46.76, 42.66, 38.26, 33.64]
README_UNIFORM = [70.54, 58.38, 50.73, 43.16, 32.73, 25.98, 20.66, 17.12]


def test_reference_runs_are_parsed(reference_runs):
  assert (
      len(reference_runs) == 90 + 18
  )  # CIFAR: 3 methods x 15 sigmas x 2; ImageNet: 3 x 3 x 2.
  run = reference_runs["cifar_split_derandomized_3.5_stabilized"]
  assert (run.dataset, run.method, run.sigma, run.stabilized) == (
      "cifar",
      "dssn",
      3.5,
      True,
  )
  assert run.num_images == 10_000 and run.source == "reference"
  assert reference_runs["cifar_split_0.5"].method == "ssn"
  assert reference_runs["imagenet_uniform_2.0"].num_images == 500
  assert reference_runs[
      "cifar_split_derandomized_3.5"
  ].seconds_per_image == pytest.approx(
      0.41, abs=0.005
  )  # The paper's 0.41 s per image at sigma = 3.5.
  with pytest.raises(ValueError):
    reference_archive.parse_reference_run_name("cifar_gaussian_0.5")


@pytest.mark.parametrize("method,stabilized", sorted(PAPER_TABLE1))
def test_table1_matches_the_paper(reference_runs, method, stabilized):
  best = tables.best_over_sigma(
      cifar_runs(reference_runs, method, stabilized), RADII
  )
  expected_pct, expected_sigma = PAPER_TABLE1[(method, stabilized)]
  assert percent(best) == expected_pct
  assert [b.sigma for b in best] == expected_sigma


def test_table1_clean_accuracies(reference_runs):
  best = tables.best_over_sigma(
      cifar_runs(reference_runs, "dssn", False), RADII
  )
  # DSSN never abstains: certified accuracy at r = 0 is the paper's clean
  # accuracy.
  assert [round(100 * b.clean_accuracy, 2) for b in best] == PAPER_CLEAN_DSSN
  # For randomized runs the paper's clean accuracy counts the top class of
  # abstentions too (mean of predict == label); certified accuracy at r = 0
  # does not, so it is lower.
  best = tables.best_over_sigma(
      cifar_runs(reference_runs, "uniform", False), RADII
  )
  by_sigma = {r.sigma: r for r in cifar_runs(reference_runs, "uniform", False)}
  top_class = [
      round(100 * by_sigma[b.sigma].results["correct"].mean(), 2) for b in best
  ]
  assert top_class == PAPER_CLEAN_UNIFORM
  assert all(b.clean_accuracy < t / 100 for b, t in zip(best, top_class))


def test_readme_numbers_are_best_over_twelve_sigmas(reference_runs):
  """The README's quoted numbers, exactly, and why three of them differ from
  Table 1.

  They equal the best over sigma when the three integer sigmas 1.0, 2.0, 3.0
  are left out; with all 15 sigmas (as the paper's Table 1, and this library)
  DSSN at r = 2.0 is 51.33 (sigma 3.0), uniform 58.43 at r = 1.0 (sigma 1.0)
  and 33.24 at r = 2.5 (sigma 2.0).
  """
  twelve = tuple(s for s in CIFAR_SIGMAS if s not in (1.0, 2.0, 3.0))
  dssn = tables.best_over_sigma(
      cifar_runs(reference_runs, "dssn", False, twelve), RADII
  )
  uniform = tables.best_over_sigma(
      cifar_runs(reference_runs, "uniform", False, twelve), RADII
  )
  assert percent(dssn) == README_DSSN
  assert percent(uniform) == README_UNIFORM
  all15_dssn = percent(
      tables.best_over_sigma(cifar_runs(reference_runs, "dssn", False), RADII)
  )
  all15_uniform = percent(
      tables.best_over_sigma(
          cifar_runs(reference_runs, "uniform", False), RADII
      )
  )
  differ = [
      (m, r)
      for m, a, b in (
          ("dssn", all15_dssn, README_DSSN),
          ("uniform", all15_uniform, README_UNIFORM),
      )
      for r, x, y in zip(RADII, a, b)
      if x != y
  ]
  assert differ == [("dssn", 2.0), ("uniform", 1.0), ("uniform", 2.5)]


def test_markdown_table1(reference_runs):
  runs = [r for r in reference_runs.values() if r.dataset == "cifar"]
  table = tables.table1_markdown(runs, RADII)
  assert "| DSSN (15 σ in [0.15, 3.5]) | 72.25% (81.50% @ σ=0.75) |" in table
  assert "51.33% (67.98% @ σ=3.0)" in table
  assert "17.12% (42.21% @ σ=3.5) |" in table
  seconds = tables.seconds_per_image_markdown(runs)
  assert "| 3.5 | 0.4107 |" in seconds


# ---------------------------------------------------------------------------
# The reports modules, the command line, our runs.


@pytest.mark.slow
def test_reports_modules_import_no_jax_or_tensorflow():
  # The dssn_jax package __init__ imports JAX, so stand in an empty package.
  code = textwrap.dedent(f"""
      import sys, types
      package = types.ModuleType("dssn_jax")
      package.__path__ = [{str(REPO_ROOT / "dssn_jax")!r}]
      sys.modules["dssn_jax"] = package
      import dssn_jax.reports.analyze
      import dssn_jax.reports.denoised
      import dssn_jax.reports.sample_size
      heavy = [m for m in sys.modules
               if m.split(".")[0] in ("jax", "tensorflow", "matplotlib")]
      assert not heavy, heavy
      assert "dssn_jax.reports.plots" in sys.modules
      """)
  proc = run_python(["-c", code])
  assert proc.returncode == 0, proc.stderr


def _write_our_runs(directory: Path):
  """Two sigmas of a small DSSN run, the first split over two process files."""
  rng = np.random.default_rng(0)
  for sigma, files in ((0.5, 2), (1.0, 1)):
    levels = int(2 * sigma * np.sqrt(3) * 255)
    for process in range(files):
      idx = np.arange(process, 40, files)
      label = rng.integers(0, 10, idx.size)
      predict = np.where(rng.random(idx.size) < 0.8, label, (label + 1) % 10)
      top = rng.integers((levels + 1) // 2, levels + 1, idx.size)
      runner = rng.integers(0, levels - top + 1)
      steps = (top - runner) // 2
      name = "certify.tsv" if process == 0 else f"certify.process{process}.tsv"
      meta = {
          "sigma": sigma,
          "q": 255,
          "dataset": "cifar10",
          "checkpoint": f"ckpt{sigma}",
          "process_index": process,
          "process_count": files,
      }
      with results_writer.ResultsWriter(
          directory / f"sigma{sigma}" / name, "dssn", meta
      ) as w:
        w.write_rows(
            {
                "idx": idx,
                "label": label,
                "predict": predict,
                "radius": steps / 255,
                "correct": predict == label,
                "time": np.full(idx.size, 0.05 * sigma),
                "count_top": top,
                "count_runner_up": runner,
                "steps": steps,
            }
        )


def _reference_for_cli(source: str, tmp_path: Path) -> tuple[Path, str]:
  """The --reference directory, and a Table 1 cell of its DSSN row."""
  if source == "synthetic":
    # DSSN at r = 1 (the CLI's radii are 0.5, 1, 2, 3, 4).
    return (
        write_synthetic_reference(tmp_path / "reference"),
        "60.00% (80.00% @ σ=0.5)",
    )
  if REFERENCE is None:
    pytest.skip(_NO_REFERENCE)
  return REFERENCE, "51.33% (67.98% @ σ=3.0)"  # Published DSSN, r = 2.


@pytest.mark.slow
@pytest.mark.parametrize("source", ["synthetic", "published"])
def test_cli_end_to_end(tmp_path, source):
  reference, published_cell = _reference_for_cli(source, tmp_path)
  ours = tmp_path / "workdir"
  _write_our_runs(ours)
  outdir = tmp_path / "analysis"
  proc = run_python(
      [
          "-m",
          "experiments.analyze",
          f"--results={ours}",
          f"--reference={reference}",
          "--dataset=cifar",
          f"--outdir={outdir}",
          "--radii=0.5,1,2,3,4",
      ],
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  tables_md = (outdir / "tables.md").read_text()
  assert proc.stdout.strip() == tables_md.strip()
  assert "## CIFAR-10" in tables_md and "ImageNet" not in tables_md
  assert published_cell in tables_md
  # Our runs: grouped by metadata (two process files merged into one run).
  assert "| cifar_dssn_0.5 | ours | DSSN | no | 0.5 | 40 |" in tables_md
  assert "| cifar_dssn_1.0 | ours | DSSN | no | 1.0 | 40 |" in tables_md
  assert "DSSN [ours]" in tables_md and "DSSN [published]" in tables_md
  pngs = sorted(outdir.glob("*.png"))
  names = {p.name for p in pngs}
  assert {
      "certified_cifar_ours_dssn.png",
      "certified_cifar_reference_dssn.png",
      "certified_cifar_reference_uniform.png",
      "envelopes_cifar.png",
      "envelopes_cifar_stabilized.png",
      "seconds_per_image_cifar.png",
  } <= names
  for png in pngs:
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, png
    assert f"({png.name})" in tables_md  # Linked from tables.md.


@pytest.mark.slow
def test_cli_reports_user_errors(tmp_path):
  proc = run_python(
      [
          "-m",
          "experiments.analyze",
          f"--results={tmp_path}/missing.tsv",
          f"--outdir={tmp_path}/out",
      ],
      timeout=300,
  )
  assert proc.returncode != 0
  assert "missing.tsv" in proc.stderr


def test_counts_are_recovered_from_clopper_pearson_bounds():
  n, alpha = 500, 0.001
  k = np.array([0, 1, 137, 250, 251, 499, 500])
  p_lower = clopper_pearson.clopper_pearson_lower(k, n, alpha)
  np.testing.assert_array_equal(
      clopper_pearson.counts_from_p_lower(p_lower, n, alpha), k
  )
  lam = 0.5 * np.sqrt(3)
  np.testing.assert_allclose(
      estimate.radius_at_n(p_lower, n, n, alpha, lam),
      2 * lam * (p_lower - 0.5),
  )
  # More samples at the same frequency: a tighter bound, a larger radius.
  more = estimate.radius_at_n(p_lower, n, 100_000, alpha, lam)
  assert (more[k > n // 2] > 2 * lam * (p_lower[k > n // 2] - 0.5)).all()
  assert more.max() <= lam
  with pytest.raises(ValueError, match="Clopper-Pearson"):
    clopper_pearson.counts_from_p_lower([0.77], n, alpha)  # Not a bound of n.


def test_what_if_n_tabulates_randomized_runs_only(tmp_path):
  _write_our_runs(tmp_path / "dssn")
  n, alpha, sigma = 500, 0.001, 0.5
  k = np.array([500, 480, 300, 200])
  p_lower = clopper_pearson.clopper_pearson_lower(k, n, alpha)
  lam = sigma * np.sqrt(3)
  meta = {
      "sigma": sigma,
      "q": 255,
      "dataset": "cifar10",
      "n": n,
      "alpha": alpha,
      "n0": 64,
  }
  with results_writer.ResultsWriter(
      tmp_path / "uniform" / "certify.tsv", "uniform", meta
  ) as w:
    w.write_rows(
        {
            "idx": np.arange(4),
            "label": np.zeros(4, int),
            "predict": np.where(p_lower > 0.5, 0, -1),
            "radius": 2 * lam * (p_lower - 0.5),
            "correct": p_lower > 0.5,
            "time": np.full(4, 0.1),
            "p_lower": p_lower,
            **top2_columns(k, 0, n=n, alpha=alpha, lam=lam),
        }
    )
  tables_md = analyze.analyze(
      results=[str(tmp_path)],
      outdir=tmp_path / "out",
      radii=(0.5, 0.75),
      what_if_n=100_000,
  )
  section = tables_md.split("### Randomized runs at N = 100,000")[1]
  assert "Uniform" in section and "DSSN" not in section.split("###")[0]
  # 3 of 4 images certify at r = 0. At N = 500, 1 of 4 reaches r = 0.75
  # (k = 500: radius 0.84; k = 480: 0.73); at N = 100,000 and the same
  # frequencies k = 480 does too (0.79).
  assert "| 25.00% (75.00% @ σ=0.5) |" in tables_md.split("### Randomized")[0]
  assert "| 50.00% (75.00% @ σ=0.5) |" in section


def test_committed_study_tables_regenerate_from_committed_results(tmp_path):
  docs = REPO_ROOT / "docs" / "fashion_mnist"
  tables_md = analyze.analyze(
      results=[str(docs / "results")],
      outdir=tmp_path,
      radii=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
      what_if_n=100_000,
  )
  assert tables_md == (docs / "tables.md").read_text()
  assert tables_md.count("| fashion_mnist_") == 14  # Every run, 1,000 images.
  assert "| 1000 |" in tables_md


def test_counts_from_p_lower_at_full_size_in_bounded_memory():
  """n = 100,000 samples, 10,000 images: no (images x n) table."""
  n, alpha = 100_000, 0.001
  k = np.random.default_rng(0).integers(0, n + 1, 10_000)
  p_lower = clopper_pearson.clopper_pearson_lower(k, n, alpha)
  tracemalloc.start()
  try:
    counts = clopper_pearson.counts_from_p_lower(p_lower, n, alpha)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  np.testing.assert_array_equal(counts, k)
  assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
