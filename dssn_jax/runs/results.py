"""Per-image certification results files: crash-safe writing, reading,
certified accuracy.

Pure NumPy: nothing here imports JAX, TensorFlow or matplotlib, so reading
results stays light. Tables and plots are in dssn_jax/reports/analysis.py.

Results file format
-------------------
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
- method ``"dssn"`` adds ``count_top count_runner_up steps`` (votes of the top
  class and of the runner-up, and ``steps = radius * q``); the randomized
  methods ``"ssn"`` and ``"uniform"`` add ``p_lower`` (Clopper-Pearson lower
  bound of the top-class probability).

Next to each results file ``X`` lives ``X.meta.json`` (written atomically): the
method, the columns and the caller's run metadata (sigma, q, checkpoint
fingerprint, dataset, subset, ...). A file is only ever appended to by a run
with identical metadata, so two runs are never mixed in one file.

Rows are appended in batches, each batch followed by flush + fsync. A process
killed mid-batch leaves at most one torn row at the end of the file: an
incomplete last line, without its newline (appends write bytes in order, so a
kill cannot leave a complete line that is not a row). The next
``ResultsWriter`` truncates the file back to its last complete row. Complete
rows of a torn batch are kept, and ``done_indices`` tells the caller which
images to skip. A complete line that is not a valid row, anywhere in the file,
is corruption (or another program's writing): an error naming the line, never
a repair.

Multi-host runs write one file per process (e.g. ``certify.tsv``,
``certify.process1.tsv``); ``read_results`` merges them.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import math
import operator
import os
from pathlib import Path
import tempfile
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import numpy as np

try:  # Advisory lock against two writers on one file; absent on Windows.
  import fcntl
except ImportError:  # pragma: no cover
  fcntl = None

# --------------------------------------------------------------------------
# Schema.

ABSTAIN = -1
BASE_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
METHOD_COLUMNS = {
    "dssn": ("count_top", "count_runner_up", "steps"),
    "ssn": ("p_lower",),
    "uniform": ("p_lower",),
}
INT_COLUMNS = frozenset(
    {
        "idx",
        "label",
        "predict",
        "correct",
        "count_top",
        "count_runner_up",
        "steps",
    }
)
FLOAT_COLUMNS = frozenset({"radius", "time", "p_lower"})
# The methods, in the order of the tables: `methods.METHODS`, spelled out
# through METHOD_COLUMNS because this file also loads on its own, without the
# package (results_test checks that the two agree).
METHODS = tuple(METHOD_COLUMNS)
META_SUFFIX = ".meta.json"
FORMAT_VERSION = 1


def columns_for(method: str) -> tuple[str, ...]:
  """The columns of a results file for `method` ("dssn", "ssn" or "uniform")."""
  if method not in METHOD_COLUMNS:
    raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
  return BASE_COLUMNS + METHOD_COLUMNS[method]


def _method_of_columns(columns: Sequence[str]) -> str:
  for method in METHODS:
    if tuple(columns) == columns_for(method):
      return method
  raise ValueError(
      f"Unrecognised results header {list(columns)}; expected one of "
      f"{[list(columns_for(m)) for m in ('dssn', 'uniform')]}."
  )


def metadata_path(path: str | os.PathLike) -> Path:
  """The metadata sidecar of results file `path`: `path + '.meta.json'`."""
  return Path(os.fspath(path) + META_SUFFIX)


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
  if not math.isfinite(value):
    raise ValueError(f"Column {column!r} needs a finite number, got {value!r}.")
  return value


def _check_row(row: Mapping[str, Any], columns: Sequence[str]) -> tuple:
  """Validates one row; returns its values as Python ints/floats in column
  order."""
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
  if "p_lower" in values and not 0.0 <= values["p_lower"] <= 1.0:
    raise ValueError(f"{where}: p_lower must be in [0, 1].")
  return tuple(values[c] for c in columns)


def _format_row(values: tuple) -> str:
  return (
      "\t".join(repr(v) if isinstance(v, float) else str(v) for v in values)
      + "\n"
  )


def _parse_line(line: bytes, columns: Sequence[str]) -> tuple | None:
  """Values of one complete data line (without newline), or None if invalid."""
  try:
    fields = line.decode("ascii").split("\t")
  except UnicodeDecodeError:
    return None
  if len(fields) != len(columns):
    return None
  row = {}
  try:
    for column, field in zip(columns, fields):
      row[column] = int(field) if column in INT_COLUMNS else float(field)
    return _check_row(row, columns)
  except ValueError:
    return None


def _header(columns: Sequence[str]) -> bytes:
  return ("\t".join(columns) + "\n").encode("ascii")


@dataclasses.dataclass
class _Scan:
  columns: tuple[str, ...]
  rows: list[tuple]
  lines: list[int]  # 1-based line number of each row.
  valid_end: int  # Byte offset just after the last valid row.
  torn: bytes  # What follows valid_end: a torn tail, b"" if none.


def _scan(
    data: bytes, path: Path, columns: Sequence[str] | None = None
) -> _Scan:
  """Parses a results file; a torn tail is reported, never silently dropped.

  Only the end of a file can be torn (rows are appended), and only as an
  incomplete last line. A complete line that is not a row means corruption:
  a ValueError naming the line, never a repair.
  """
  newline = data.find(b"\n")
  if newline < 0:
    raise ValueError(f"{path}: no complete header line.")
  header = data[:newline].decode("ascii", errors="replace").split("\t")
  if columns is None:
    _method_of_columns(header)
  elif tuple(header) != tuple(columns):
    raise ValueError(
        f"{path}: header {header} does not match the expected columns "
        f"{list(columns)}."
    )
  columns = tuple(header)
  rows, lines, pos, valid_end = [], [], newline + 1, newline + 1
  line_no = 1
  while pos < len(data):
    end = data.find(b"\n", pos)
    line_no += 1
    if end < 0:  # An incomplete last line: a write cut short by a kill.
      break
    values = _parse_line(data[pos:end], columns)
    if values is None:
      raise ValueError(
          f"{path}: line {line_no} is corrupt, not a valid row "
          f"({data[pos:end][:80]!r}); a killed run only leaves an incomplete "
          "last line, so this is corruption or another program's writing. "
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
  return _Scan(columns, rows, lines, valid_end, data[valid_end:])


# --------------------------------------------------------------------------
# Metadata.


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  if isinstance(obj, (set, frozenset)):
    return sorted(obj)
  raise TypeError(
      f"Run metadata value {obj!r} of type {type(obj).__name__} is not JSON "
      "serialisable; pass numbers, strings, lists and dicts."
  )


def _canonical(obj: Any) -> Any:
  """JSON round trip, so metadata compares the same before and after saving."""
  return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _fsync_dir(directory: Path) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # pragma: no cover (e.g. Windows)
    return
  try:
    os.fsync(fd)
  except OSError:  # pragma: no cover (some file systems refuse)
    pass
  finally:
    os.close(fd)


def _atomic_write_json(path: Path, obj: Any) -> None:
  fd, tmp = tempfile.mkstemp(
      prefix=path.name + ".", suffix=".tmp", dir=path.parent
  )
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    _unlink_quietly(tmp)
    raise
  _fsync_dir(path.parent)


def _unlink_quietly(path: str | os.PathLike) -> None:
  try:
    os.unlink(path)
  except OSError:
    pass


def read_metadata(path: str | os.PathLike) -> dict:
  """The sidecar of results file `path`: {'format_version', 'method',
  'columns', 'run'}."""
  meta_path = metadata_path(path)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{path} has no metadata sidecar {meta_path.name}; it was not written "
        "by dssn_jax.runs.results.ResultsWriter."
    ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_path}: not valid JSON ({e}).") from None
  if not isinstance(meta, dict) or not {"method", "run"} <= meta.keys():
    raise ValueError(f"{meta_path}: not a results metadata file.")
  return meta


_MISSING = "<missing>"


def diff_metadata(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
  """'key: file has X, this run has Y' for every key (not in `ignore`) that
  differs."""
  ignore = set(ignore)
  keys = sorted((set(old) | set(new)) - ignore)
  return [
      f"{k}: file has {old.get(k, _MISSING)!r}, "
      f"this run has {new.get(k, _MISSING)!r}"
      for k in keys
      if old.get(k, _MISSING) != new.get(k, _MISSING)
  ]


def check_metadata(
    path: str | os.PathLike, method: str, run_metadata: Mapping[str, Any]
) -> None:
  """Raises ValueError unless results file `path` belongs to this run (same
  method and run metadata), naming every field that differs."""
  path = Path(path)
  meta_path = metadata_path(path)
  fix = (
      f"Use another workdir or results file name for this run, or delete "
      f"{path} and {meta_path.name} to start over."
  )
  try:
    stored = read_metadata(path)
  except FileNotFoundError:
    raise ValueError(
        f"Results file {path} exists but its metadata {meta_path.name} does "
        f"not, so it cannot be checked to belong to this run. {fix}"
    ) from None
  problems = diff_metadata({"method": stored.get("method")}, {"method": method})
  problems += diff_metadata(
      stored.get("run") or {}, _canonical(dict(run_metadata))
  )
  if problems:
    raise ValueError(
        f"Results file {path} belongs to a different run; refusing to mix "
        "runs. Mismatching fields: " + "; ".join(problems) + f". {fix}"
    )


def update_metadata(path: str | os.PathLike, **fields: Any) -> None:
  """Sets top-level fields of a results file's sidecar (atomically). Not for
  the run metadata, which never changes once rows exist."""
  if "run" in fields:
    raise ValueError("The run metadata of a results file never changes.")
  meta = read_metadata(path)
  meta.update(_canonical(fields))
  _atomic_write_json(metadata_path(path), meta)


# --------------------------------------------------------------------------
# Writing.


class ResultsWriter:
  """Appends per-image rows to a results file, resuming and repairing it.

  with ResultsWriter(path, "dssn", {"sigma": 0.5, "q": 255, ...}) as writer:
    todo = [i for i in indices if i not in writer.done_indices]
    for batch in ...:
      writer.write_rows({"idx": ..., "label": ..., ...})  # columns of arrays

  On open, an existing file must carry the same method and run metadata
  (ValueError otherwise, file untouched); a torn last row is truncated away.
  Every `write_rows` call is durable (flush + fsync) when it returns.
  """

  def __init__(
      self,
      path: str | os.PathLike,
      method: str,
      run_metadata: Mapping[str, Any],
  ):
    self.path = Path(path)
    self.method = method
    self.columns = columns_for(method)
    if not isinstance(run_metadata, Mapping):
      raise TypeError("run_metadata must be a dict.")
    self.run_metadata = _canonical(dict(run_metadata))
    self._fd: int | None = None
    self._done: set[int] = set()
    self._done_view: frozenset[int] | None = None
    self._line_of: dict[int, int] = {}
    self._broken = False

  # -- opening --------------------------------------------------------------

  def __enter__(self) -> "ResultsWriter":
    return self if self._fd is not None else self.open()

  def __exit__(self, *exc_info) -> None:
    self.close()

  @property
  def done_indices(self) -> frozenset[int]:
    """idx of every row already in the file (skip these images).

    A frozenset, rebuilt only after a write: cheap to query in a loop.
    """
    if self._done_view is None:
      self._done_view = frozenset(self._done)
    return self._done_view

  @property
  def num_rows(self) -> int:
    return len(self._done)

  def line_of(self, idx: int) -> int | None:
    """The 1-based line number of the row of image idx (None: no row)."""
    return self._line_of.get(idx)

  def _meta(self) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "method": self.method,
        "columns": list(self.columns),
        "run": self.run_metadata,
    }

  def _check_existing_metadata(self) -> None:
    check_metadata(self.path, self.method, self.run_metadata)

  def open(self) -> "ResultsWriter":
    if self._fd is not None:
      raise RuntimeError(f"{self.path} is already open.")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self.path.exists():
      self._check_existing_metadata()
      fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
    else:
      # Sidecar first: a data file never exists without its metadata. A stale
      # sidecar without a data file describes no rows and is replaced.
      _atomic_write_json(metadata_path(self.path), self._meta())
      fd = os.open(
          self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644
      )
      _fsync_dir(self.path.parent)
    try:
      self._lock(fd)
      self._recover(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    self._broken = False
    return self

  def _lock(self, fd: int) -> None:
    if fcntl is None:  # pragma: no cover
      return
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise ValueError(
            f"{self.path} is being written by another process; give each "
            "process its own results file."
        ) from None
      logging.warning(
          "Cannot lock %s (%s); continuing without a lock.", self.path, e
      )

  def _recover(self, fd: int) -> None:
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0) if size else b""
    header = _header(self.columns)
    if len(data) < len(header) and header.startswith(data):
      # New file, or killed while writing the header.
      os.ftruncate(fd, 0)
      self._write_all(fd, header)
      os.fsync(fd)
      self._next_line = 2
      self._done, self._done_view, self._line_of = set(), None, {}
      return
    scan = _scan(data, self.path, self.columns)
    if scan.torn:
      logging.warning(
          "%s: removing a torn last row left by an interrupted run "
          "(%d bytes: %r).",
          self.path,
          len(scan.torn),
          scan.torn[:200],
      )
      os.ftruncate(fd, scan.valid_end)
      os.fsync(fd)
    self._done, self._done_view = {values[0] for values in scan.rows}, None
    self._line_of = {
        values[0]: line for values, line in zip(scan.rows, scan.lines)
    }
    self._next_line = (scan.lines[-1] if scan.lines else 1) + 1

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Also releases the lock.
      self._fd = None

  # -- writing --------------------------------------------------------------

  @staticmethod
  def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
      view = view[os.write(fd, view) :]

  def _batch_rows(self, rows) -> list[Mapping[str, Any]]:
    expected = set(self.columns)

    def check_keys(keys, what):
      keys = set(keys)
      if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        raise ValueError(
            f"{what} for method {self.method!r} must have exactly the columns "
            f"{list(self.columns)}; missing {missing}, unexpected {extra}."
        )

    if isinstance(rows, np.ndarray) and rows.dtype.names:
      rows = {name: rows[name] for name in rows.dtype.names}
    if isinstance(rows, Mapping):  # Columns of equal-length 1-D arrays.
      check_keys(rows.keys(), "A batch")
      arrays = {k: np.asarray(v) for k, v in rows.items()}
      lengths = {k: a.shape for k, a in arrays.items()}
      if (
          any(a.ndim != 1 for a in arrays.values())
          or len(set(lengths.values())) != 1
      ):
        raise ValueError(
            "Batch columns must be 1-D arrays of one length, got shapes "
            f"{lengths}."
        )
      lists = {k: a.tolist() for k, a in arrays.items()}
      n = len(lists["idx"])
      return [{k: lists[k][i] for k in self.columns} for i in range(n)]
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
      raise TypeError(
          "write_rows takes a dict of equal-length columns, a structured "
          f"array, or a list of row dicts; got {type(rows).__name__}."
      )
    rows = list(rows)
    for row in rows:
      if not isinstance(row, Mapping):
        raise TypeError(f"Each row must be a dict, got {type(row).__name__}.")
      check_keys(row.keys(), "A row")
    return rows

  def write_rows(self, rows) -> int:
    """Appends a batch durably; returns the number of rows written.

    `rows`: a dict mapping every column to an equal-length 1-D array (or list),
    a structured array with those fields, or a list of row dicts. The whole
    batch is validated before anything is written. A duplicate idx within the
    batch or an idx already in the file is a ValueError.
    """
    if self._fd is None:
      raise RuntimeError(
          f"{self.path} is not open; use `with ResultsWriter(...)`."
      )
    if self._broken:
      raise RuntimeError(
          f"An earlier write to {self.path} failed; reopen the writer to "
          "repair the file."
      )
    values = [_check_row(row, self.columns) for row in self._batch_rows(rows)]
    idx = [v[0] for v in values]
    counts = collections.Counter(idx)
    dup_batch = sorted(i for i, c in counts.items() if c > 1)
    if dup_batch:
      raise ValueError(f"Duplicate idx within the batch: {dup_batch[:10]}.")
    already = sorted(set(idx) & self._done)
    if already:
      raise ValueError(
          f"idx {already[:10]} already in {self.path}; skip "
          "writer.done_indices."
      )
    if not values:
      return 0
    data = "".join(_format_row(v) for v in values).encode("ascii")
    try:
      self._write_all(self._fd, data)
      os.fsync(self._fd)
    except BaseException:
      self._broken = True
      raise
    self._done.update(idx)
    self._done_view = None
    for i in idx:
      self._line_of[i] = self._next_line
      self._next_line += 1
    return len(values)


# --------------------------------------------------------------------------
# Reading.


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
  modified.
  """
  paths = as_paths(path_or_paths)
  if not paths:
    raise ValueError("No results files given.")
  columns, parts, owner = None, [], {}
  for path in paths:
    with open(path, "rb") as f:
      scan = _scan(f.read(), path, columns)
    if scan.torn:
      logging.warning(
          "%s: ignoring a torn last row (%d bytes).", path, len(scan.torn)
      )
    if metadata_path(path).exists():
      check_subset(
          path,
          [v[0] for v in scan.rows],
          scan.lines,
          read_metadata(path).get("run") or {},
      )
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
    dtype = np.int64 if column in INT_COLUMNS else np.float64
    out[column] = np.array([v[j] for v in parts], dtype=dtype).reshape(
        len(parts)
    )
  out["correct"] = out["correct"].astype(bool)
  return out


# --------------------------------------------------------------------------
# Certified accuracy.


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
    correct = correct & (predict != ABSTAIN)
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
