"""The quickstart's main job and the study, on smoke sizes."""

import json
import os

import pytest

from configs import fashion_mnist as fashion_mnist_config
from dssn_jax import jobs
from dssn_jax.reports import analyze
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from tests.conftest import run_python

# Trains models or starts processes: the slow tier (`-m 'not slow'`).
pytestmark = pytest.mark.slow


def smoke_config(data_dir):
  config = fashion_mnist_config.get_config("smoke")
  config.data_dir = data_dir
  return config


def test_study_grid_of_the_study_config():
  runs = jobs.study_grid(fashion_mnist_config.get_config("study").study)
  names = [run.name for run in runs]
  assert len(runs) == 14 == len(set(names))
  assert {run.noise for run in runs} == {"dssn", "uniform", "ssn"}
  assert {run.sigma for run in runs} == {0.25, 0.5, 1.0, 2.0}
  assert sorted(n for n in names if n.endswith("_stab")) == [
      "dssn_0.5_stab",
      "uniform_0.5_stab",
  ]


def test_quickstart_main_job(tmp_path, fashion_mnist_data_dir):
  workdir = str(tmp_path / "quickstart")
  tables = jobs.train_certify_analyze(
      smoke_config(fashion_mnist_data_dir), workdir
  )
  assert "Table 1 format" in tables and "DSSN" in tables
  analysis = os.listdir(os.path.join(workdir, "analysis"))
  assert "tables.md" in analysis
  assert any(name.endswith(".png") for name in analysis)
  rows = results_reader.read_results(os.path.join(workdir, "certify_dssn.tsv"))
  assert rows["idx"].size == 6


def test_study_on_smoke_grid(tmp_path, fashion_mnist_data_dir):
  config = smoke_config(fashion_mnist_data_dir)
  runs = jobs.study_grid(config.study)
  assert [run.name for run in runs] == ["dssn_0.5", "uniform_0.5"]
  outdir = str(tmp_path / "docs")
  tables = jobs.run_study(config, runs, str(tmp_path / "runs"), outdir)
  assert "DSSN" in tables and "Uniform" in tables
  for run in runs:
    meta = results_metadata.read_metadata(
        tmp_path / "runs" / run.name / f"certify_{run.noise}.tsv"
    )
    assert meta["run"]["training_noise"] == run.noise
  assert os.path.exists(os.path.join(outdir, "tables.md"))
  # The committed copies alone regenerate the tables.
  for run in runs:
    copied = os.path.join(
        outdir, "results", run.name, f"certify_{run.noise}.tsv"
    )
    assert (
        results_metadata.read_metadata(copied)["run"]["training_noise"]
        == run.noise
    )
  again = analyze.analyze(
      results=[os.path.join(outdir, "results")],
      outdir=str(tmp_path / "again"),
      radii=tuple(config.certify.radii),
      what_if_n=config.study.what_if_n,
  )
  assert again == tables
  assert "### Randomized runs at N = 100,000" in tables
  # Every run's certifier timed side by side.
  timing = tmp_path / "timing.json"
  proc = run_python(
      [
          "-m",
          "benchmarks.time_certifiers",
          "--config=configs/fashion_mnist.py:smoke",
          f"--config.data_dir={fashion_mnist_data_dir}",
          f"--workdir={tmp_path / 'runs'}",
          "--images=2",
          "--rounds=1",
          f"--output={timing}",
      ]
  )
  assert proc.returncode == 0, proc.stderr
  report = json.loads(timing.read_text())
  assert set(report["runs"]) == {"dssn_0.5", "uniform_0.5"}
  assert report["runs"]["dssn_0.5"]["forwards_per_image"] == 441
  assert report["runs"]["uniform_0.5"]["forwards_per_image"] == (
      config.certify.n0 + config.certify.n
  )
  assert all(r["seconds_per_image"] > 0 for r in report["runs"].values())
  assert "| dssn_0.5 | 441 |" in proc.stdout
  missing = run_python(
      [
          "-m",
          "benchmarks.time_certifiers",
          "--config=configs/fashion_mnist.py:smoke",
          f"--workdir={tmp_path / 'nothing'}",
      ]
  )
  assert missing.returncode == 1
  assert "No checkpoint" in missing.stderr and "Traceback" not in missing.stderr
