"""Whole jobs: train, certify and analyze in one call.

`train_certify_analyze` is the quickstart's main job; `run_study` repeats it
over a grid of noise kinds and levels with the same model, data and training
budget, then analyzes all runs together. Every stage resumes, so rerunning a
killed job continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import copy
import dataclasses
import os
import shutil

from absl import logging

from dssn_jax.reports import analyze
from dssn_jax.runs import certify_workdir
from dssn_jax.runs import results_metadata
from dssn_jax.runs import run_files
from dssn_jax.runtime import distributed
from dssn_jax.training import classifier


@dataclasses.dataclass(frozen=True)
class StudyRun:
  """One classifier of a study: its training noise, sigma and stability."""

  noise: str
  sigma: float
  stability: bool = False

  @property
  def name(self) -> str:
    suffix = "_stab" if self.stability else ""
    return f"{self.noise}_{self.sigma:g}{suffix}"


def study_grid(study) -> list[StudyRun]:
  """The runs of a config's `study` fields: every noise at every sigma, then
  stability training for `stability_noises` at `stability_sigma`."""
  runs = [
      StudyRun(noise, sigma) for noise in study.noises for sigma in study.sigmas
  ]
  runs += [
      StudyRun(noise, study.stability_sigma, stability=True)
      for noise in study.stability_noises
  ]
  return runs


def configure(config, run: StudyRun):
  """A copy of config that trains and certifies `run` (certified with the
  method matching its training noise)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.noise = run.noise
    config.sigma = run.sigma
    config.stability = run.stability
    config.certify.method = run.noise
  return config


def train_certify_analyze(
    config, workdir: str, report: Callable[[str], None] = logging.info
) -> str:
  """Trains (or resumes), certifies and analyzes one classifier.

  Args:
    config: a config of configs/.
    workdir: the run's directory; the analysis goes to workdir/analysis.
    report: where the certification summary goes (entry points pass print).

  Returns:
    The Markdown tables (also in workdir/analysis/tables.md); "" on the
    processes other than 0 of a multi-process run, which write nothing.
  """
  classifier.train_and_evaluate(config, workdir)
  summary = certify_workdir.certify_workdir(config, workdir)
  if not distributed.is_primary():
    return ""
  report(run_files.format_summary(summary))
  return analyze.analyze(
      results=summary["results_files"],
      outdir=os.path.join(workdir, "analysis"),
      radii=tuple(config.certify.radii),
  )


def run_study(
    config,
    runs: Sequence[StudyRun],
    workdir: str,
    outdir: str,
    report: Callable[[str], None] = logging.info,
) -> str:
  """Trains and certifies every run, then analyzes them together.

  The per-image results of every run (the results file, its metadata and
  summary) are copied to outdir/results/<run.name>/, and the analysis reads
  those copies, so `python -m experiments.analyze
  --results=<outdir>/results --outdir=<outdir>` regenerates every table and
  plot from outdir alone (checkpoints and training workdirs can go).

  Args:
    config: the shared config (model, data, training budget, subset, N).
    runs: the grid.
    workdir: runs go to workdir/<run.name>.
    outdir: tables.md, the plots and results/ of all runs.
    report: where each run's name and certification summary go.

  Returns:
    The Markdown tables; "" on the processes other than 0 of a
    multi-process run, which write nothing.
  """
  copies = []
  for run in runs:
    run_config = configure(config, run)
    run_dir = os.path.join(workdir, run.name)
    report(f"== {run.name}")
    classifier.train_and_evaluate(run_config, run_dir)
    summary = certify_workdir.certify_workdir(run_config, run_dir)
    if distributed.is_primary():
      report(run_files.format_summary(summary))
      copies.extend(
          _copy_results(path, os.path.join(outdir, "results", run.name))
          for path in summary["results_files"]
      )
  if not distributed.is_primary():
    return ""
  return analyze.analyze(
      results=copies,
      outdir=outdir,
      radii=tuple(config.certify.radii),
      what_if_n=config.study.get("what_if_n") or None,
  )


def _copy_results(path: str, destination: str) -> str:
  """Copies a results file and its sidecars (metadata, summary) into
  destination; returns the copied results file."""
  os.makedirs(destination, exist_ok=True)
  for source in (
      path,
      results_metadata.metadata_path(path),
      run_files.summary_path(path),
  ):
    if os.path.exists(source):
      shutil.copy2(source, destination)
  return os.path.join(destination, os.path.basename(path))
