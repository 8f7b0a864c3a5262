"""The results-file format: columns, rows, and scanning a file's bytes.

A results file is tab-separated text: one header line, then one row per test
image, in the order the images were certified. The first six columns are those
of Cohen et al.'s (2019) tools, so their analysis scripts read our files:

    idx  label  predict  radius  correct  time  <method columns>

- ``idx``: index of the image in the evaluated dataset split (unique per run).
- ``predict``: class predicted by the smoothed classifier, ``-1`` (ABSTAIN)
  when a randomized certifier abstains.
- ``radius``: certified l1 radius, written at full precision (``repr`` of a
  Python float, which round-trips exactly).
- ``correct``: 1 when ``predict == label`` else 0 (so 0 for an abstention).
- ``time``: wall-clock seconds spent on this image.
- the method's own columns, `methods.method(name).result_columns`: the exact
  method ``"dssn"`` adds ``count_top count_runner_up steps`` (votes of the top
  class and of the runner-up, and ``steps = radius * q``); the randomized
  methods ``"ssn"`` and ``"uniform"`` add ``p_lower`` (Clopper-Pearson lower
  bound of the selected class's probability: the paper's certificate, in
  ``predict`` and ``radius``) and the top-2 and box-constrained certificates
  of the same counts (core/box.py, docs/design.md section 6):
  ``count_top`` (votes of the class selected from the n0 draws among the n
  counting draws), ``count_runner_up`` (the largest count of another class
  among those n), ``predict_top2`` (the selected class, ``-1`` where
  ``p_lower <= p_b_upper``), ``p_b_upper`` (upper bound of the runner-up's
  probability; with p_lower it holds jointly at alpha), ``radius_top2``
  (l1 radius without the box) and ``radius_box`` (l1 radius within
  [0, 1]^d, ``inf`` where no point of the box changes the prediction).
  Files written before these columns existed (``p_lower`` alone,
  `methods.Method.legacy_result_columns`) are still read, without them.
  The deciding methods (``dssn_early``, ``uniform_seq``, ``ssn_seq``:
  answers at the run's requested radii only, docs/design.md section 7)
  write in ``radius`` the largest requested radius certified, and add
  ``samples`` (splits or counting draws used) and ``radius_refused`` (the
  smallest requested radius refused, ``inf`` if none), then their counts
  (and ``p_lower`` at the stopping look).

Rows are appended (results_writer.py), so only the end of a file can be torn,
and only as an incomplete last line; `scan` reports such a tail and treats any
complete line that is not a row as corruption. The metadata sidecar next to
each file is in results_metadata.py.

Pure NumPy: nothing here imports JAX, TensorFlow or matplotlib.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from typing import Any, Mapping, Sequence

import numpy as np

from dssn_jax.core import methods

ABSTAIN = -1
BASE_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
# The type of every column; each method's columns (core/methods.py) are here
# too (results_test checks that none is missing).
INT_COLUMNS = frozenset(
    {
        "idx",
        "label",
        "predict",
        "correct",
        "count_top",
        "count_runner_up",
        "steps",
        "predict_top2",
        "samples",
    }
)
FLOAT_COLUMNS = frozenset(
    {
        "radius",
        "time",
        "p_lower",
        "p_b_upper",
        "radius_top2",
        "radius_box",
        "radius_refused",
    }
)
# Float columns that may hold +inf (never NaN or -inf).
UNBOUNDED_COLUMNS = frozenset({"radius_box", "radius_refused"})


def columns_for(method: str) -> tuple[str, ...]:
  """The columns of a results file for `method` (a name in methods.METHODS)."""
  if method not in methods.METHODS:
    raise ValueError(
        f"Unknown method {method!r}; expected one of {methods.METHODS}."
    )
  return BASE_COLUMNS + methods.method(method).result_columns


def legacy_columns_for(method: str) -> tuple[tuple[str, ...], ...]:
  """The columns of the files of `method` that earlier versions wrote (read,
  never appended to)."""
  columns_for(method)  # Checks the name.
  return tuple(
      BASE_COLUMNS + c for c in methods.method(method).legacy_result_columns
  )


def _check_header(columns: Sequence[str]) -> None:
  """A ValueError unless `columns` are the columns of some method, current
  or legacy."""
  known = list(
      dict.fromkeys(
          c
          for m in methods.METHODS
          for c in (columns_for(m),) + legacy_columns_for(m)
      )
  )
  if tuple(columns) not in known:
    raise ValueError(
        f"Unrecognised results header {list(columns)}; expected one of "
        f"{[list(c) for c in known]}."
    )


def header(columns: Sequence[str]) -> bytes:
  """The header line of a file with `columns`, newline included."""
  return ("\t".join(columns) + "\n").encode("ascii")


# --------------------------------------------------------------------------
# Rows: validation, formatting, parsing.


def _as_int(column: str, value: Any) -> int:
  if isinstance(value, (bool, np.bool_)):
    return int(value)
  try:
    return operator.index(value)
  except TypeError:
    raise ValueError(
        f"Column {column!r} needs an integer, got {value!r} "
        f"({type(value).__name__})."
    ) from None


def _as_float(column: str, value: Any) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(
        f"Column {column!r} needs a number, got {value!r}."
    ) from None
  if not math.isfinite(value) and not (
      column in UNBOUNDED_COLUMNS and value == math.inf
  ):
    raise ValueError(f"Column {column!r} needs a finite number, got {value!r}.")
  return value


def check_row(row: Mapping[str, Any], columns: Sequence[str]) -> tuple:
  """Validates one row; returns its values as Python ints/floats in column
  order (a ValueError naming the row's idx for an invalid one)."""
  values = {}
  for column in columns:
    conv = _as_int if column in INT_COLUMNS else _as_float
    values[column] = conv(column, row[column])
  where = f"row idx={values['idx']}"
  if values["idx"] < 0:
    raise ValueError(f"{where}: idx must be >= 0.")
  if values["label"] < 0:
    raise ValueError(f"{where}: label must be >= 0.")
  if values["predict"] < ABSTAIN:
    raise ValueError(
        f"{where}: predict must be a class index or {ABSTAIN} (abstain)."
    )
  if values["correct"] != int(values["predict"] == values["label"]):
    raise ValueError(
        f"{where}: correct={values['correct']} but "
        f"predict={values['predict']}, label={values['label']} (correct must "
        "be predict == label; an abstention is never correct)."
    )
  if values["time"] < 0:
    raise ValueError(f"{where}: time must be >= 0 seconds.")
  if "steps" in values:
    if min(values["count_top"], values["count_runner_up"], values["steps"]) < 0:
      raise ValueError(f"{where}: counts and steps must be >= 0.")
    if values["count_runner_up"] > values["count_top"]:
      raise ValueError(f"{where}: count_runner_up > count_top.")
    _check_steps(where, values)
  if "p_lower" in values:
    if not 0.0 <= values["p_lower"] <= 1.0:
      raise ValueError(f"{where}: p_lower must be in [0, 1].")
  if "predict_top2" in values:
    _check_top2(where, values)
  return tuple(values[c] for c in columns)


def _check_top2(where: str, values: Mapping[str, Any]) -> None:
  """The top-2 and box columns of a randomized row agree with each other and
  with the paper's certificate (core/box.py): p_b_upper <= 1 - p_lower, so
  the top-2 certificate abstains only where the paper's does, with the same
  class, and radius_box >= radius_top2 >= 0 (both 0 on abstention)."""
  p_a, p_b = values["p_lower"], values["p_b_upper"]
  pred = values["predict_top2"]
  r2, rb = values["radius_top2"], values["radius_box"]
  if min(values["count_top"], values["count_runner_up"]) < 0:
    raise ValueError(f"{where}: counts must be >= 0.")
  if not 0.0 <= p_b <= 1.0 or p_b > 1.0 - p_a + 1e-12:
    raise ValueError(f"{where}: p_b_upper={p_b!r} must be in [0, 1 - p_lower].")
  if pred < ABSTAIN or (pred == ABSTAIN) != (p_a <= p_b):
    raise ValueError(
        f"{where}: predict_top2={pred} with p_lower={p_a!r}, p_b_upper="
        f"{p_b!r} (the top-2 certificate abstains exactly when p_lower <= "
        "p_b_upper)."
    )
  if values["predict"] != ABSTAIN and pred != values["predict"]:
    raise ValueError(
        f"{where}: predict_top2={pred} but predict={values['predict']} (both "
        "certify the class selected from the n0 draws)."
    )
  if pred == ABSTAIN and (r2, rb) != (0.0, 0.0):
    raise ValueError(f"{where}: radii of an abstention must be 0.")
  if r2 < 0 or rb < r2 * (1 - 1e-9):
    raise ValueError(
        f"{where}: radius_top2={r2!r}, radius_box={rb!r}; need 0 <= "
        "radius_top2 <= radius_box."
    )


def _check_steps(where: str, values: Mapping[str, int]) -> None:
  """steps must follow from the counts by the tie rule of
  `dssn.certify_from_counts`: floor((c_A - c_B - [B < A]) / 2). The
  runner-up's class is not stored, so both values of [B < A] are allowed
  (only 0 when the counts tie: then B > A)."""
  gap = values["count_top"] - values["count_runner_up"]
  allowed = {gap // 2} | ({(gap - 1) // 2} if gap > 0 else set())
  if values["steps"] not in allowed:
    raise ValueError(
        f"{where}: steps={values['steps']} but count_top - count_runner_up = "
        f"{gap} gives steps in {sorted(allowed)} (steps = floor((c_A - c_B "
        "- [B < A]) / 2))."
    )


def format_row(values: tuple) -> str:
  """One line of a file: the values of `check_row`, newline included."""
  return (
      "\t".join(repr(v) if isinstance(v, float) else str(v) for v in values)
      + "\n"
  )


def _parse_line(line: bytes, columns: Sequence[str]) -> tuple | str:
  """Values of one complete data line (without newline), or why it is not
  a valid row."""
  try:
    fields = line.decode("ascii").split("\t")
  except UnicodeDecodeError:
    return "not ASCII text"
  if len(fields) != len(columns):
    return f"{len(fields)} fields, expected {len(columns)}"
  row = {}
  try:
    for column, field in zip(columns, fields):
      row[column] = int(field) if column in INT_COLUMNS else float(field)
    return check_row(row, columns)
  except ValueError as e:
    return str(e)


# --------------------------------------------------------------------------
# A whole file.


@dataclasses.dataclass
class Scan:
  """What `scan` found in a file's bytes."""

  columns: tuple[str, ...]
  rows: list[tuple]  # The values of each row, in file order.
  lines: list[int]  # 1-based line number of each row.
  valid_end: int  # Byte offset just after the last valid row.
  torn: bytes  # What follows valid_end: a torn tail, b"" if none.


def scan(
    data: bytes, path: str | os.PathLike, columns: Sequence[str] | None = None
) -> Scan:
  """Parses a results file; a torn tail is reported, never silently dropped.

  Args:
    data: the file's bytes.
    path: the file, for error messages.
    columns: the expected header; None accepts the header of any method.

  Returns:
    The rows, their line numbers and the torn tail, if any.

  Raises:
    ValueError: for a missing or unexpected header, a complete line that is
      not a row (corruption: an error naming the line, never a repair), or
      an idx on two rows.
  """
  newline = data.find(b"\n")
  if newline < 0:
    raise ValueError(f"{path}: no complete header line.")
  found = data[:newline].decode("ascii", errors="replace").split("\t")
  if columns is None:
    _check_header(found)
  elif tuple(found) != tuple(columns):
    if tuple(found) in set().union(
        *(legacy_columns_for(m) for m in methods.METHODS)
    ):
      raise ValueError(
          f"{path}: written by an earlier dssn-jax, with the columns "
          f"{found}; it is still read and analysed, but the columns "
          f"{list(columns)} cannot be appended to it. Certify into another "
          "results file (or delete this one to certify it again)."
      )
    raise ValueError(
        f"{path}: header {found} does not match the expected columns "
        f"{list(columns)}."
    )
  columns = tuple(found)
  rows, lines, pos, valid_end = [], [], newline + 1, newline + 1
  line_no = 1
  while pos < len(data):
    end = data.find(b"\n", pos)
    line_no += 1
    if end < 0:  # An incomplete last line: a write cut short by a kill.
      break
    values = _parse_line(data[pos:end], columns)
    if isinstance(values, str):
      raise ValueError(
          f"{path}: line {line_no} is corrupt, not a valid row "
          f"({data[pos:end][:80]!r}: {values}); a killed run only leaves an "
          "incomplete last line, so this is corruption or another program's "
          "writing. "
          "Inspect the file: fix or delete that line, or delete the file to "
          "start over."
      )
    rows.append(values)
    lines.append(line_no)
    valid_end = end + 1
    pos = end + 1
  seen, dups = set(), set()
  for values in rows:
    (dups if values[0] in seen else seen).add(values[0])
  if dups:
    raise ValueError(
        f"{path}: duplicate idx {sorted(dups)[:10]} in the file; it was not "
        "written by ResultsWriter alone. Inspect or delete the file."
    )
  return Scan(columns, rows, lines, valid_end, data[valid_end:])
