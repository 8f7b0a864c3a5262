"""Tests of dssn_jax/reports/reference_archive.py on a small synthetic tree
laid out like the authors' repository (checkpoints/<run>/*.npy)."""

import json

import numpy as np
import pytest

from dssn_jax.reports import reference_archive
from tests.conftest import run_python

IMAGES, CLASSES = 12, 10


def _write_run(root, name, labels, rng, *, derandomized, seconds=0.5):
  """One run directory as the authors' code saves it (float64 arrays)."""
  run = root / "checkpoints" / name
  run.mkdir(parents=True)
  np.save(run / "labels.npy", labels.astype(np.float64))
  frequencies = rng.dirichlet(np.ones(CLASSES), IMAGES)
  np.save(run / "preds.npy", frequencies)
  if derandomized:
    predicted = rng.integers(0, CLASSES, IMAGES)
    np.save(run / "predicted_labels.npy", predicted.astype(np.float64))
    radius = rng.integers(0, 40, IMAGES) / 255
  else:
    predicted = frequencies.argmax(axis=1)
    radius = rng.uniform(-0.5, 1.0, IMAGES)
  np.save(run / "radius_l1.npy", radius)
  np.save(run / "time_per.npy", np.float64(seconds))
  np.save(run / "losses_train.npy", rng.random(5))  # Ignored.
  return predicted, radius


@pytest.fixture
def authors_repo(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, CLASSES, IMAGES)
  written = {
      "cifar_split_derandomized_0.25": _write_run(
          tmp_path,
          "cifar_split_derandomized_0.25",
          labels,
          rng,
          derandomized=True,
          seconds=0.03,
      ),
      "cifar_uniform_0.5_stabilized": _write_run(
          tmp_path,
          "cifar_uniform_0.5_stabilized",
          labels,
          rng,
          derandomized=False,
          seconds=13.1,
      ),
  }
  (tmp_path / "checkpoints" / "notes").mkdir()  # Not a run: skipped.
  return tmp_path, labels, written


def test_archive_holds_every_run_as_the_analysis_reads_it(
    authors_repo, tmp_path
):
  repo, labels, written = authors_repo
  path = reference_archive.build_reference_archive(repo, tmp_path / "out")
  with np.load(path) as archive:
    assert sorted(archive.files) == sorted(
        ["cifar__labels"]
        + [
            f"{name}__{field}"
            for name in written
            for field in ("predicted", "radius_l1")
        ]
    )
    assert archive["cifar__labels"].dtype == np.int16
    np.testing.assert_array_equal(archive["cifar__labels"], labels)
    for name, (predicted, radius) in written.items():
      assert archive[f"{name}__predicted"].dtype == np.int16
      np.testing.assert_array_equal(archive[f"{name}__predicted"], predicted)
      np.testing.assert_array_equal(archive[f"{name}__radius_l1"], radius)
  runs = reference_archive.load_reference_runs(tmp_path / "out")
  assert sorted(runs) == sorted(written)
  dssn = runs["cifar_split_derandomized_0.25"]
  assert (dssn.method, dssn.sigma, dssn.stabilized) == ("dssn", 0.25, False)
  assert dssn.seconds_per_image == 0.03
  uniform = runs["cifar_uniform_0.5_stabilized"]
  assert (uniform.method, uniform.stabilized) == ("uniform", True)
  np.testing.assert_array_equal(
      uniform.results["correct"], written[uniform.name][0] == labels
  )
  with open(tmp_path / "out" / reference_archive.RUNS_NAME) as f:
    assert json.load(f)["cifar_uniform_0.5_stabilized"] == {
        "images": IMAGES,
        "seconds_per_image": 13.1,
    }


def test_checkpoints_directory_itself_is_accepted(authors_repo, tmp_path):
  repo, _, written = authors_repo
  reference_archive.build_reference_archive(
      repo / "checkpoints", tmp_path / "out"
  )
  assert sorted(
      reference_archive.load_reference_runs(tmp_path / "out")
  ) == sorted(written)


def test_runs_with_different_labels_are_refused(authors_repo, tmp_path):
  repo, labels, _ = authors_repo
  _write_run(
      repo,
      "cifar_split_0.5",
      (labels + 1) % CLASSES,
      np.random.default_rng(1),
      derandomized=False,
  )
  with pytest.raises(ValueError, match="differs from the labels"):
    reference_archive.build_reference_archive(repo, tmp_path / "out")


def test_no_runs_is_an_error(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(ValueError, match="No run directories"):
    reference_archive.build_reference_archive(tmp_path, tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="smoothingSplittingNoise"):
    reference_archive.build_reference_archive(
        tmp_path / "missing", tmp_path / "out"
    )


@pytest.mark.slow
def test_cli_builds_what_analyze_reads(authors_repo, tmp_path):
  repo, _, _ = authors_repo
  out = tmp_path / "reference"
  built = run_python(
      [
          "-m",
          "experiments.build_reference",
          f"--authors_repo={repo}",
          f"--outdir={out}",
      ]
  )
  assert built.returncode == 0, built.stderr
  analyzed = run_python(
      [
          "-m",
          "experiments.analyze",
          f"--reference={out}",
          "--dataset=cifar",
          f"--outdir={tmp_path / 'analysis'}",
      ]
  )
  assert analyzed.returncode == 0, analyzed.stderr
  assert "published" in analyzed.stdout
  missing = run_python(
      [
          "-m",
          "experiments.build_reference",
          f"--authors_repo={tmp_path / 'missing'}",
          f"--outdir={out}",
      ]
  )
  assert missing.returncode == 1
  assert missing.stderr.strip().startswith("error:")
  assert "Traceback" not in missing.stderr
