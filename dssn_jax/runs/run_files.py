"""The results files of a certification run in a workdir, and its summary.

A run writes one results file per JAX process into the workdir:
`<name>.tsv` for process 0, `<name>.process1.tsv`, ... (`<name>` is
`certify.results_name`, by default `certify_<method>`), so no two processes
ever append to one file and each file is resumable on its own. Before anyone
writes, every process reads the rows of the other processes' files (which
must belong to the same run) and skips those images: a restart with another
number of processes re-slices the subset but certifies every image exactly
once. When all are done, process 0 writes the summary of the merged files to
`<name>.summary.json`.

Every function takes the config's `certify` fields (`certify_config`).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from dssn_jax.runs import results_writer
from dssn_jax.runtime import distributed


def _name(certify_config) -> str:
  return certify_config.results_name or f"certify_{certify_config.method}"


def results_path(workdir: str, certify_config) -> str:
  """This process's results file for the config's method."""
  name = _name(certify_config)
  if jax.process_index() > 0:
    name += f".process{jax.process_index()}"
  return os.path.join(workdir, name + ".tsv")


def run_files(workdir: str, certify_config) -> list[str]:
  """The existing results files of the config's run, of every process."""
  name = _name(certify_config)
  first = os.path.join(workdir, name + ".tsv")
  others = glob.glob(
      os.path.join(glob.escape(workdir), glob.escape(name) + ".process*.tsv")
  )
  return ([first] if os.path.exists(first) else []) + sorted(others)


def summary_path(path: str) -> str:
  """The summary written next to results file `path` (`X.tsv`:
  `X.summary.json`)."""
  return path[: -len(".tsv")] + ".summary.json"


def done_in_other_files(
    workdir: str, certify_config, run_metadata: Mapping[str, Any]
) -> np.ndarray:
  """idx of the rows in the run's files of other processes (this process's
  own file is its writer's business); refuses files of another run, whose
  rows must not stand in for this run's."""
  own = os.path.abspath(results_path(workdir, certify_config))
  others = [
      p for p in run_files(workdir, certify_config) if os.path.abspath(p) != own
  ]
  for path in others:
    stored = results_metadata.read_metadata(path)
    problems = results_metadata.diff_metadata(
        {"method": stored.get("method"), **(stored.get("run") or {})},
        {"method": certify_config.method, **run_metadata},
        ignore=("process_index",),
    )
    if problems:
      raise ValueError(
          f"Results file {path} of another process belongs to a different "
          f"run; refusing to mix runs. Mismatching fields: "
          + "; ".join(problems)
          + ". Use another --workdir or "
          "--config.certify.results_name, or delete that run's files."
      )
  if not others:
    return np.zeros((0,), np.int64)
  return results_reader.read_results(others)["idx"]


def check_rows_requested(
    writer: results_writer.ResultsWriter, subset: range, path: str
) -> None:
  """Refuses a results file `path` holding rows of images this run does not
  ask for (appended by hand, or another subset's): they would be counted."""
  extra = sorted(i for i in writer.done_indices if i not in subset)
  if extra:
    raise ValueError(
        f"{path}: line {writer.line_of(extra[0])} has idx {extra[0]}, which "
        f"is not among the images this run certifies ({len(extra)} such "
        f"rows); they would be counted in the summary. Delete those lines, "
        f"or the file to start over."
    )


def summarize(path, radii) -> dict[str, Any]:
  """Clean and certified accuracy, seconds per image of a results file (or
  of the merged files of a multi-process run)."""
  rows = results_reader.read_results(path)
  accuracy = results_reader.certified_accuracy(
      rows["radius"], rows["correct"], radii, predict=rows["predict"]
  )
  return {
      "images": int(rows["idx"].size),
      "clean_accuracy": float(np.mean(rows["correct"])),
      "certified_accuracy": {str(r): float(a) for r, a in zip(radii, accuracy)},
      "seconds_per_image": float(np.mean(rows["time"])),
  }


def write_summary(workdir: str, certify_config, sigma: float) -> dict[str, Any]:
  """The summary of the run's results files (of every process), also
  written next to the first one by process 0 when possible."""
  files = run_files(workdir, certify_config)
  summary = {
      "results": files[0],
      "results_files": files,
      "method": certify_config.method,
      "sigma": sigma,
      **summarize(files, tuple(certify_config.radii)),
  }
  if distributed.is_primary():
    try:
      with open(summary_path(files[0]), "w") as f:
        json.dump(summary, f, indent=2)
    except OSError as e:
      logging.warning(
          "Summary not written next to %s (%s).", files[0], e.strerror
      )
  return summary


def summarize_read_only(
    workdir: str,
    certify_config,
    sigma: float,
    run_metadata: Mapping[str, Any],
    subset: range,
    error: OSError,
) -> dict[str, Any]:
  """A finished run whose results file we cannot write (read-only storage)
  is summarized; an unfinished one is an error that says what to do."""
  path = results_path(workdir, certify_config)
  if not os.path.exists(path):
    raise ValueError(
        f"Cannot create {path} ({error.strerror}): the workdir is not "
        f"writable. Certify into a writable copy of the workdir."
    ) from error
  results_metadata.check_metadata(path, certify_config.method, run_metadata)
  done = set(
      results_reader.read_results(run_files(workdir, certify_config))[
          "idx"
      ].tolist()
  )
  missing = set(subset) - done
  if missing:
    raise ValueError(
        f"{path} cannot be opened for writing ({error.strerror}) and "
        f"{len(missing)} of the requested images have no row yet. Certify "
        f"into a writable copy of the workdir, or make it writable."
    ) from error
  logging.warning(
      "%s is read-only; every requested image has a row, so it "
      "is only summarized.",
      path,
  )
  return write_summary(workdir, certify_config, sigma)


def format_summary(summary: dict[str, Any]) -> str:
  """A few human-readable lines of a summary."""
  lines = [
      f"{summary['images']} images, {summary['method']} at sigma="
      f"{summary['sigma']}: clean accuracy "
      f"{100 * summary['clean_accuracy']:.2f}%, "
      f"{summary['seconds_per_image']:.4f} s/image",
      "certified accuracy: "
      + ", ".join(
          f"r={r}: {100 * a:.2f}%"
          for r, a in summary["certified_accuracy"].items()
      ),
  ]
  return "\n".join(lines)
