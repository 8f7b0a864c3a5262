"""Reading results files, and the certified accuracy of their rows.

`read_results` reads one file or merges the files of a multi-host run (one
per process) into columns of NumPy arrays, never modifying them;
`certified_accuracy` counts the images certified at each radius. Tables and
plots are in dssn_jax/reports/.

Pure NumPy: nothing here imports JAX, TensorFlow or matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from dssn_jax.runs import results_format
from dssn_jax.runs import results_integrity
from dssn_jax.runs import results_metadata


def subset_contains(run_metadata: Mapping[str, Any], idx: int) -> bool:
  """Whether image idx belongs to the subset a run's metadata describes
  (indices start, start + skip, ..., at most max_examples of them; a run
  without these fields accepts every idx)."""
  start = run_metadata.get("start", 0)
  skip = run_metadata.get("skip", 1)
  max_examples = run_metadata.get("max_examples", -1)
  if idx < start or (idx - start) % skip:
    return False
  return (
      max_examples is None
      or max_examples < 0
      or ((idx - start) // skip < max_examples)
  )


def check_subset(
    path,
    indices: Sequence[int],
    lines: Sequence[int],
    run_metadata: Mapping[str, Any],
) -> None:
  """Raises ValueError naming the first row whose idx is outside the run's
  subset (such a row was not written by this run)."""
  for idx, line in zip(indices, lines):
    if not subset_contains(run_metadata, idx):
      raise ValueError(
          f"{path}: line {line} has idx {idx}, which is not among the images "
          f"this run certifies (start={run_metadata.get('start', 0)}, "
          f"skip={run_metadata.get('skip', 1)}, max_examples="
          f"{run_metadata.get('max_examples', -1)}); it was not written by "
          "this run. Delete that line, or the file to start over."
      )


def read_verified(
    path: str | os.PathLike, columns: Sequence[str] | None = None
) -> results_format.Scan:
  """The rows of one results file, checked (results_integrity.py): in the
  run's subset, consistent with the run metadata and with the file's digest.
  A torn last row is left out with a warning. Raises ValueError naming the
  file and the line of the first row that fails."""
  meta_path = results_metadata.metadata_path(path)
  # The sidecar before the rows: the writer records a batch's digest before
  # appending it, so every row read then has its digest.
  meta = results_metadata.read_metadata(path) if meta_path.exists() else None
  with open(path, "rb") as f:
    scan = results_format.scan(f.read(), path, columns)
  if scan.torn:
    logging.warning(
        "%s: ignoring a torn last row (%d bytes).", path, len(scan.torn)
    )
  if meta is None:
    logging.warning(
        "%s has no metadata sidecar %s: its rows cannot be checked against "
        "their run or digest.",
        path,
        meta_path.name,
    )
    return scan
  run = meta.get("run") or {}
  indices = [v[0] for v in scan.rows]
  check_subset(path, indices, scan.lines, run)
  results_integrity.check_rows(path, scan, run, meta["method"])
  newer = None
  if len(scan.rows) > (meta.get("digest") or {}).get("rows", 0):
    newer = results_metadata.read_metadata(path)  # Appended meanwhile.
  results_integrity.check_digest(path, scan, meta, newer)
  return scan


def as_paths(path_or_paths) -> list[Path]:
  """One path or a sequence of paths, as a list of Paths."""
  if isinstance(path_or_paths, (str, os.PathLike)):
    return [Path(path_or_paths)]
  return [Path(p) for p in path_or_paths]


def read_results(
    path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
) -> dict[str, np.ndarray]:
  """Reads one or several results files into columns of NumPy arrays.

  Several files (one per process of a multi-host run) are merged; rows are
  sorted by idx and an idx in more than one file is a ValueError. Ints are
  int64, floats float64, `correct` is bool. A torn last row (a file being
  written, or left by a kill) is skipped with a warning; the file is not
  modified. Every file is checked first (`read_verified`): an edited or
  corrupted row is a ValueError naming its file and line.
  """
  paths = as_paths(path_or_paths)
  if not paths:
    raise ValueError("No results files given.")
  columns, parts, owner = None, [], {}
  for path in paths:
    scan = read_verified(path, columns)
    columns = scan.columns
    for values in scan.rows:
      if values[0] in owner:
        raise ValueError(
            f"idx {values[0]} is in both {owner[values[0]]} and {path}; these "
            "files do not come from disjoint shards of one run."
        )
      owner[values[0]] = path
    parts.extend(scan.rows)
  parts.sort(key=lambda v: v[0])
  out = {}
  for j, column in enumerate(columns):
    dtype = np.int64 if column in results_format.INT_COLUMNS else np.float64
    out[column] = np.array([v[j] for v in parts], dtype=dtype).reshape(
        len(parts)
    )
  out["correct"] = out["correct"].astype(bool)
  return out


def certified_accuracy(radius, correct, radii, predict=None):
  """Fraction of images with `correct` and `radius >= r`, for each r in `radii`.

  An abstention is never correct: rows with predict == ABSTAIN (if `predict`
  is given) and rows with a negative or NaN radius never count, for any r >= 0.
  Returns an array shaped like `radii` (a float for a scalar r).
  """
  radius = np.asarray(radius, dtype=np.float64)
  correct = np.asarray(correct).astype(bool)
  if radius.ndim != 1 or radius.shape != correct.shape:
    raise ValueError(
        f"radius and correct must be 1-D of one length, got {radius.shape} and "
        f"{correct.shape}."
    )
  if predict is not None:
    predict = np.asarray(predict)
    if predict.shape != radius.shape:
      raise ValueError("predict must have the shape of radius.")
    correct = correct & (predict != results_format.ABSTAIN)
  if radius.size == 0:
    raise ValueError(
        "No results: certified accuracy of zero images is undefined."
    )
  r = np.asarray(radii, dtype=np.float64)
  if np.isnan(r).any() or (r < 0).any():
    raise ValueError(f"radii must be >= 0, got {radii!r}.")
  certified = np.sort(radius[correct & ~np.isnan(radius)])
  count = certified.size - np.searchsorted(certified, r, side="left")
  acc = count / radius.size
  return float(acc) if acc.ndim == 0 else acc
