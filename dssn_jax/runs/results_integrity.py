"""What makes an edited or corrupted results file fail to read.

Two defences, both applied by every reader (`results_reader.read_results`,
hence analyze and the certification summary) and by a resuming
`results_writer.ResultsWriter`:

- **Cross-checks.** A row holds what recomputes part of it, and the run
  metadata holds what recomputes more: the DSSN radius is `steps / q`,
  `steps` follows from the two counts by the tie rule, the counts lie in
  [0, L], L follows from sigma and q; a randomized radius is
  `2 lambda (p_lower - 1/2)`, and p_lower is a Clopper-Pearson bound of
  (n, alpha). Each check runs when the fields it needs are recorded.
  (`results_format.check_row` holds the checks of a row alone.)
- **A digest** (format version 2). The metadata sidecar records, before a
  batch of rows is appended, a short sha256 of every row (8 hex digits per
  row, in file order), a sha256 of the run's metadata, and how many rows are
  known to be in the file (`committed`). A row whose line differs from its
  digest (a label, a count, a `correct` edited), a row without one
  (appended by hand), a missing row or edited run metadata is refused with
  a line naming the file and the line. A digest detects accidental and
  naive edits; anyone can recompute it, so a published file is re-verified
  against its model with `python -m experiments.audit`.

Files of format version 1 have no digest: they are read with the
cross-checks, with a warning that no digest was recorded; a writer resuming
one starts a digest, recording how many earlier rows it could not verify.

NumPy and the standard library (SciPy for the Clopper-Pearson check of
randomized rows, imported when one is read).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from dssn_jax.core import methods
from dssn_jax.runs import results_format

ROW_HASH_HEX = 8  # Hex digits of a row's sha256 kept in the digest.
DIGEST_ALGORITHM = f"sha256, first {ROW_HASH_HEX} hex digits per row"


def row_hash(values: tuple) -> str:
  """The digest of one row: its line as the writer formats it."""
  line = results_format.format_row(values).encode("ascii")
  return hashlib.sha256(line).hexdigest()[:ROW_HASH_HEX]


def row_hashes(rows: Sequence[tuple]) -> str:
  """The digests of `rows`, concatenated in order."""
  return "".join(row_hash(values) for values in rows)


def run_hash(meta: Mapping[str, Any]) -> str:
  """sha256 of what identifies a file's run: method, columns, run."""
  ident = {k: meta.get(k) for k in ("method", "columns", "run")}
  text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def new_digest(meta: Mapping[str, Any]) -> dict[str, Any]:
  """The digest of a file without rows."""
  return {
      "algorithm": DIGEST_ALGORITHM,
      "run_sha256": run_hash(meta),
      "rows": 0,
      "committed": 0,
      "row_sha256": "",
      "unverified_rows": 0,
  }


def extend_digest(digest: Mapping[str, Any], rows: Sequence[tuple]) -> dict:
  """The digest once `rows` are appended: written before the rows are, so
  that every row in the file always has its digest (rows known to be in the
  file so far become `committed`)."""
  return {
      **digest,
      "rows": digest["rows"] + len(rows),
      "committed": digest["rows"],
      "row_sha256": digest["row_sha256"] + row_hashes(rows),
  }


def levels(sigma: float, q: int) -> int:
  """L = floor(2 sqrt(3) sigma q), as `smoothing.SmoothingSpec.levels`
  computes it (kept here so that reading a file needs no JAX;
  results_test checks that the two agree)."""
  product = 2 * (float(sigma) * math.sqrt(3)) * int(q)
  return math.floor(product * (1 + 1e-9))


# --------------------------------------------------------------------------
# Cross-checks against the run metadata.


def check_run(path: str | os.PathLike, run: Mapping[str, Any]) -> None:
  """Raises ValueError if the run metadata contradicts itself (L is not the
  number of levels of sigma and q)."""
  if {"sigma", "q", "levels"} <= run.keys():
    expected = levels(run["sigma"], run["q"])
    if run["levels"] != expected:
      raise ValueError(
          f"{_meta_name(path)}: levels={run['levels']} but sigma="
          f"{run['sigma']}, q={run['q']} give L={expected}; the run metadata "
          "was edited after the rows were written. Restore it, or delete "
          f"{path} and its sidecar to certify again."
      )


def check_rows(
    path: str | os.PathLike,
    scan: results_format.Scan,
    run: Mapping[str, Any],
    method: str,
) -> None:
  """Raises ValueError naming the first row of a file of `method` that
  contradicts the run metadata (see the module docstring for the checks;
  a deciding method's radius is a requested one, so only its run is)."""
  check_run(path, run)
  if methods.method(method).decides:
    return
  columns = scan.columns
  col = {name: j for j, name in enumerate(columns)}
  if "steps" in col:
    _check_dssn_rows(path, scan, col, run)
  if "p_lower" in col:
    _check_randomized_rows(path, scan, col, run)


def _refuse(path, line: int, what: str) -> None:
  raise ValueError(
      f"{path}: line {line}: {what}; the row was edited or corrupted after "
      "it was written. Restore the file, or delete that line (or the file "
      "and its sidecar) to certify it again."
  )


def _check_dssn_rows(path, scan, col, run) -> None:
  q, num_levels = run.get("q"), run.get("levels")
  for values, line in zip(scan.rows, scan.lines):
    steps, top = values[col["steps"]], values[col["count_top"]]
    runner_up = values[col["count_runner_up"]]
    if q is not None:
      radius = values[col["radius"]]
      if not math.isclose(radius, steps / q, rel_tol=1e-6, abs_tol=1e-12):
        _refuse(
            path,
            line,
            f"radius {radius!r} is not steps / q = {steps} / {q} = "
            f"{steps / q!r}",
        )
    if num_levels is not None and top + runner_up > num_levels:
      _refuse(
          path,
          line,
          f"count_top {top} + count_runner_up {runner_up} exceed the "
          f"L = {num_levels} votes of the run",
      )


@functools.lru_cache(maxsize=8)
def _cp_table(n: int, alpha: float) -> np.ndarray:
  from dssn_jax.core import clopper_pearson  # pylint: disable=g-import-not-at-top

  return clopper_pearson.clopper_pearson_lower(np.arange(n + 1), n, alpha)


def _check_randomized_rows(path, scan, col, run) -> None:
  sigma, n, alpha = run.get("sigma"), run.get("n"), run.get("alpha")
  p_lower = np.array([v[col["p_lower"]] for v in scan.rows], np.float64)
  for values, line in zip(scan.rows, scan.lines):
    predict, p = values[col["predict"]], values[col["p_lower"]]
    if (predict == results_format.ABSTAIN) != (p <= 0.5):
      _refuse(
          path,
          line,
          f"predict {predict} with p_lower {p!r} (a randomized certifier "
          "abstains exactly when p_lower <= 1/2)",
      )
  if sigma is not None:
    lam = float(sigma) * math.sqrt(3)
    for values, line in zip(scan.rows, scan.lines):
      radius, p = values[col["radius"]], values[col["p_lower"]]
      expected = 2 * lam * (p - 0.5)
      if not math.isclose(radius, expected, rel_tol=1e-6, abs_tol=1e-12):
        _refuse(
            path,
            line,
            f"radius {radius!r} is not 2 lambda (p_lower - 1/2) = "
            f"{expected!r} (lambda = sigma sqrt(3), sigma={sigma})",
        )
  if n is None or alpha is None or not p_lower.size:
    return
  # The bound increases with the count: the nearest table entry is one of
  # the two around p's insertion point (as clopper_pearson.counts_from_p_lower).
  table = _cp_table(int(n), float(alpha))
  above = np.clip(np.searchsorted(table, p_lower), 1, int(n))
  error = np.minimum(
      np.abs(table[above - 1] - p_lower), np.abs(table[above] - p_lower)
  )
  bad = np.flatnonzero(error > 1e-9)
  if bad.size:
    _refuse(
        path,
        scan.lines[bad[0]],
        f"p_lower {p_lower[bad[0]]!r} is no Clopper-Pearson bound of a count "
        f"out of n={n} at alpha={alpha}",
    )
  if "count_top" in col:  # The count p_lower was computed from.
    top = np.array([v[col["count_top"]] for v in scan.rows], np.int64)
    runner_up = np.array(
        [v[col["count_runner_up"]] for v in scan.rows], np.int64
    )
    over = np.flatnonzero(top + runner_up > int(n))
    if over.size:
      _refuse(
          path,
          scan.lines[over[0]],
          f"count_top {top[over[0]]} + count_runner_up {runner_up[over[0]]} "
          f"exceed the n={n} counting draws of the run",
      )
    off = np.flatnonzero(np.abs(table[top] - p_lower) > 1e-9)
    if off.size:
      _refuse(
          path,
          scan.lines[off[0]],
          f"p_lower {p_lower[off[0]]!r} is not the Clopper-Pearson bound of "
          f"count_top {top[off[0]]} out of n={n} at alpha={alpha} "
          f"({table[top[off[0]]]!r})",
      )


# --------------------------------------------------------------------------
# The digest.


def _meta_name(path) -> str:
  return os.fspath(path) + ".meta.json"


def check_digest(
    path: str | os.PathLike,
    scan: results_format.Scan,
    meta: Mapping[str, Any],
    newer_meta: Mapping[str, Any] | None = None,
) -> None:
  """Raises ValueError naming the first line that does not match the digest.

  Args:
    path: the results file.
    scan: its rows.
    meta: its sidecar, read before the file's bytes (so no row it lacks can
      be missing from the file).
    newer_meta: the sidecar read again after the bytes, when the file had
      rows `meta` does not cover yet (a writer appended meanwhile).
  """
  version = meta.get("format_version", 1)
  if version == 1 and "digest" not in meta:
    logging.warning(
        "%s: format version 1, no digest recorded: its rows are "
        "cross-checked only (python -m experiments.audit re-verifies them "
        "against the checkpoint).",
        path,
    )
    return
  digest = meta.get("digest")
  if not isinstance(digest, Mapping) or digest.get("algorithm") != (
      DIGEST_ALGORITHM
  ):
    raise ValueError(
        f"{_meta_name(path)}: format version {version} without the digest "
        f"({DIGEST_ALGORITHM}) of its rows; the sidecar was edited or is "
        "from another version of dssn-jax."
    )
  if digest.get("run_sha256") != run_hash(meta):
    raise ValueError(
        f"{_meta_name(path)}: its method, columns or run metadata differ "
        "from those recorded in its digest when the rows were written (the "
        "sidecar was edited). Restore it, or delete the file and its sidecar "
        "to certify again."
    )
  rows = len(scan.rows)
  latest = digest
  if rows > digest["rows"] and newer_meta is not None:
    latest = newer_meta.get("digest") or digest
  recorded = latest["row_sha256"]
  unverified = latest.get("unverified_rows", 0)
  for i, (values, line) in enumerate(zip(scan.rows, scan.lines)):
    want = recorded[i * ROW_HASH_HEX : (i + 1) * ROW_HASH_HEX]
    if not want:
      raise ValueError(
          f"{path}: line {line} has no digest: the file's digest records "
          f"{latest['rows']} rows (the row was appended by another program). "
          "Delete that line, or restore the file."
      )
    if row_hash(values) != want:
      raise ValueError(
          f"{path}: line {line} (idx {values[0]}) does not match its digest "
          f"in {os.path.basename(_meta_name(path))}: the row was edited after "
          "it was written. Restore the file, or delete that line to certify "
          "the image again."
      )
  if rows < digest["committed"]:
    raise ValueError(
        f"{path}: line {rows + 2}: missing; the digest records "
        f"{digest['committed']} rows written, the file holds {rows} (rows "
        "were deleted). Restore the file, or delete it and its sidecar to "
        "certify again."
    )
  if unverified:
    logging.warning(
        "%s: the first %d rows were written before the file kept a digest "
        "(format version 1): the digest shows they were not edited since, "
        "not before.",
        path,
        unverified,
    )
