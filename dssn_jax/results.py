"""Per-image certification results: crash-safe files, certified accuracy, tables, plots.

Pure NumPy; matplotlib is imported only by the plotting functions. Nothing here
imports JAX or TensorFlow, so analysis stays light.

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
killed mid-batch leaves at most one torn row at the end of the file (a partial
line, or a line with the wrong fields); the next ``ResultsWriter`` truncates
the file back to its last complete row. Complete rows of a torn batch are kept,
and ``done_indices`` tells the caller which images to skip.

Multi-host runs write one file per process (e.g. ``certify.tsv``,
``certify.process1.tsv``); ``read_results`` merges them.

Reference results
-----------------
``load_reference_runs`` reads the authors' published per-image certificates
(``levine_feizi_2021_certificates.npz`` and ``levine_feizi_2021_runs.json``).
There, ``predict`` is the top class even when a randomized certifier abstained
(its radius is then negative), so ``correct.mean()`` is the paper's "clean
accuracy" of randomized runs, while certified accuracy at radius 0 excludes
abstentions.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import glob as glob_lib
import json
import logging
import math
import operator
import os
from pathlib import Path
import re
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

try:  # Advisory lock against two writers on one file; absent on Windows.
  import fcntl
except ImportError:  # pragma: no cover
  fcntl = None

# --------------------------------------------------------------------------
# Schema.

METHODS = ("dssn", "ssn", "uniform")
ABSTAIN = -1
BASE_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
METHOD_COLUMNS = {
    "dssn": ("count_top", "count_runner_up", "steps"),
    "ssn": ("p_lower",),
    "uniform": ("p_lower",),
}
INT_COLUMNS = frozenset(
    {"idx", "label", "predict", "correct", "count_top", "count_runner_up", "steps"})
FLOAT_COLUMNS = frozenset({"radius", "time", "p_lower"})
META_SUFFIX = ".meta.json"
FORMAT_VERSION = 1
DEFAULT_RADII = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)

METHOD_NAMES = {
    "dssn": "DSSN",
    "ssn": "SSN, independent splits (randomized)",
    "uniform": "Uniform additive noise (randomized)",
}
DATASET_NAMES = {"cifar": "CIFAR-10", "imagenet": "ImageNet"}
_DATASET_ALIASES = {
    "cifar10": "cifar", "cifar-10": "cifar", "cifar_10": "cifar",
    "imagenet2012": "imagenet", "imagenet-1k": "imagenet", "ilsvrc2012": "imagenet",
}
# Run-metadata fields that may legitimately differ between the files of one
# run (one file per process of a multi-host run).
PER_PROCESS_KEYS = frozenset({
    "process_index", "process_count", "num_processes", "host", "hostname",
    "pid", "shard_index", "num_shards", "start_time", "created", "created_at",
})


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
      f"{[list(columns_for(m)) for m in ('dssn', 'uniform')]}.")


def metadata_path(path: str | os.PathLike) -> Path:
  """The metadata sidecar of results file `path`: `path + '.meta.json'`."""
  return Path(os.fspath(path) + META_SUFFIX)


def normalize_dataset(name: Any) -> str:
  """Canonical short dataset name: 'cifar10' -> 'cifar', 'imagenet2012' -> 'imagenet'."""
  name = str(name).strip().lower()
  return _DATASET_ALIASES.get(name, name)


def format_sigma(sigma: float) -> str:
  """0.15 -> '0.15', 1 -> '1.0' (the paper's spelling)."""
  text = f"{float(sigma):g}"
  return text if any(c in text for c in ".en") else text + ".0"


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
        f"({type(value).__name__}).") from None


def _as_float(column: str, value: Any) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"Column {column!r} needs a number, got {value!r}.") from None
  if not math.isfinite(value):
    raise ValueError(f"Column {column!r} needs a finite number, got {value!r}.")
  return value


def _check_row(row: Mapping[str, Any], columns: Sequence[str]) -> tuple:
  """Validates one row; returns its values as Python ints/floats in column order."""
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
    raise ValueError(f"{where}: predict must be a class index or {ABSTAIN} (abstain).")
  if values["correct"] != int(values["predict"] == values["label"]):
    raise ValueError(
        f"{where}: correct={values['correct']} but predict={values['predict']}, "
        f"label={values['label']} (correct must be predict == label; an abstention "
        "is never correct).")
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
  return "\t".join(repr(v) if isinstance(v, float) else str(v) for v in values) + "\n"


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
  valid_end: int  # Byte offset just after the last valid row.
  torn: bytes  # What follows valid_end: a torn tail, b"" if none.


def _scan(data: bytes, path: Path, columns: Sequence[str] | None = None) -> _Scan:
  """Parses a results file; a torn tail is reported, never silently dropped.

  Only the end of a file can be torn (rows are appended). Invalid lines
  followed by a valid row mean real corruption: a ValueError, never a repair.
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
        f"{list(columns)}.")
  columns = tuple(header)
  rows, pos, valid_end, first_bad = [], newline + 1, newline + 1, None
  while pos < len(data):
    end = data.find(b"\n", pos)
    complete = end >= 0
    end = end if complete else len(data)
    values = _parse_line(data[pos:end], columns) if complete else None
    if values is None:
      if first_bad is None:
        first_bad = pos
    elif first_bad is not None:
      line_no = data.count(b"\n", 0, first_bad) + 1
      raise ValueError(
          f"{path}: line {line_no} is corrupt but valid rows follow it; this is "
          "not a torn write from an interrupted run. Inspect or delete the file.")
    else:
      rows.append(values)
      valid_end = end + 1
    pos = end + 1
  seen, dups = set(), set()
  for values in rows:
    (dups if values[0] in seen else seen).add(values[0])
  if dups:
    raise ValueError(
        f"{path}: duplicate idx {sorted(dups)[:10]} in the file; it was not "
        "written by ResultsWriter alone. Inspect or delete the file.")
  return _Scan(columns, rows, valid_end, data[valid_end:])


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
      "serialisable; pass numbers, strings, lists and dicts.")


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
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
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
  """The sidecar of results file `path`: {'format_version', 'method', 'columns', 'run'}."""
  meta_path = metadata_path(path)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{path} has no metadata sidecar {meta_path.name}; it was not written by "
        "dssn_jax.results.ResultsWriter.") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_path}: not valid JSON ({e}).") from None
  if not isinstance(meta, dict) or not {"method", "run"} <= meta.keys():
    raise ValueError(f"{meta_path}: not a results metadata file.")
  return meta


_MISSING = "<missing>"


def _diff(old: Mapping[str, Any], new: Mapping[str, Any],
          ignore: Iterable[str] = ()) -> list[str]:
  ignore = set(ignore)
  keys = sorted((set(old) | set(new)) - ignore)
  return [
      f"{k}: file has {old.get(k, _MISSING)!r}, this run has {new.get(k, _MISSING)!r}"
      for k in keys if old.get(k, _MISSING) != new.get(k, _MISSING)
  ]


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

  def __init__(self, path: str | os.PathLike, method: str,
               run_metadata: Mapping[str, Any]):
    self.path = Path(path)
    self.method = method
    self.columns = columns_for(method)
    if not isinstance(run_metadata, Mapping):
      raise TypeError("run_metadata must be a dict.")
    self.run_metadata = _canonical(dict(run_metadata))
    self._fd: int | None = None
    self._done: set[int] = set()
    self._done_view: frozenset[int] | None = None
    self._broken = False

  # -- opening --------------------------------------------------------------

  def __enter__(self) -> "ResultsWriter":
    return self.open()

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

  def _meta(self) -> dict:
    return {"format_version": FORMAT_VERSION, "method": self.method,
            "columns": list(self.columns), "run": self.run_metadata}

  def _check_existing_metadata(self) -> None:
    meta_path = metadata_path(self.path)
    fix = (f"Use another workdir or results file name for this run, or delete "
           f"{self.path} and {meta_path.name} to start over.")
    try:
      stored = read_metadata(self.path)
    except FileNotFoundError:
      raise ValueError(
          f"Results file {self.path} exists but its metadata {meta_path.name} does "
          f"not, so it cannot be checked to belong to this run. {fix}") from None
    problems = _diff({"method": stored.get("method")}, {"method": self.method})
    problems += _diff(stored.get("run") or {}, self.run_metadata)
    if problems:
      raise ValueError(
          f"Results file {self.path} belongs to a different run; refusing to mix "
          "runs. Mismatching fields: " + "; ".join(problems) + f". {fix}")

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
      fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
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
            f"{self.path} is being written by another process; give each process "
            "its own results file.") from None
      logging.warning("Cannot lock %s (%s); continuing without a lock.", self.path, e)

  def _recover(self, fd: int) -> None:
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0) if size else b""
    header = _header(self.columns)
    if len(data) < len(header) and header.startswith(data):
      # New file, or killed while writing the header.
      os.ftruncate(fd, 0)
      self._write_all(fd, header)
      os.fsync(fd)
      self._done, self._done_view = set(), None
      return
    scan = _scan(data, self.path, self.columns)
    if scan.torn:
      logging.warning(
          "%s: removing a torn last row left by an interrupted run (%d bytes: %r).",
          self.path, len(scan.torn), scan.torn[:200])
      os.ftruncate(fd, scan.valid_end)
      os.fsync(fd)
    self._done, self._done_view = {values[0] for values in scan.rows}, None

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Also releases the lock.
      self._fd = None

  # -- writing --------------------------------------------------------------

  @staticmethod
  def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
      view = view[os.write(fd, view):]

  def _batch_rows(self, rows) -> list[Mapping[str, Any]]:
    expected = set(self.columns)

    def check_keys(keys, what):
      keys = set(keys)
      if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        raise ValueError(
            f"{what} for method {self.method!r} must have exactly the columns "
            f"{list(self.columns)}; missing {missing}, unexpected {extra}.")

    if isinstance(rows, np.ndarray) and rows.dtype.names:
      rows = {name: rows[name] for name in rows.dtype.names}
    if isinstance(rows, Mapping):  # Columns of equal-length 1-D arrays.
      check_keys(rows.keys(), "A batch")
      arrays = {k: np.asarray(v) for k, v in rows.items()}
      lengths = {k: a.shape for k, a in arrays.items()}
      if any(a.ndim != 1 for a in arrays.values()) or len(set(lengths.values())) != 1:
        raise ValueError(f"Batch columns must be 1-D arrays of one length, got shapes {lengths}.")
      lists = {k: a.tolist() for k, a in arrays.items()}
      n = len(lists["idx"])
      return [{k: lists[k][i] for k in self.columns} for i in range(n)]
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
      raise TypeError(
          "write_rows takes a dict of equal-length columns, a structured array, "
          f"or a list of row dicts; got {type(rows).__name__}.")
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
      raise RuntimeError(f"{self.path} is not open; use `with ResultsWriter(...)`.")
    if self._broken:
      raise RuntimeError(
          f"An earlier write to {self.path} failed; reopen the writer to repair the file.")
    values = [_check_row(row, self.columns) for row in self._batch_rows(rows)]
    idx = [v[0] for v in values]
    counts = collections.Counter(idx)
    dup_batch = sorted(i for i, c in counts.items() if c > 1)
    if dup_batch:
      raise ValueError(f"Duplicate idx within the batch: {dup_batch[:10]}.")
    already = sorted(set(idx) & self._done)
    if already:
      raise ValueError(
          f"idx {already[:10]} already in {self.path}; skip writer.done_indices.")
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
    return len(values)


# --------------------------------------------------------------------------
# Reading.


def _as_paths(path_or_paths) -> list[Path]:
  if isinstance(path_or_paths, (str, os.PathLike)):
    return [Path(path_or_paths)]
  return [Path(p) for p in path_or_paths]


def read_results(path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]
                 ) -> dict[str, np.ndarray]:
  """Reads one or several results files into columns of NumPy arrays.

  Several files (one per process of a multi-host run) are merged; rows are
  sorted by idx and an idx in more than one file is a ValueError. Ints are
  int64, floats float64, `correct` is bool. A torn last row (a file being
  written, or left by a kill) is skipped with a warning; the file is not
  modified.
  """
  paths = _as_paths(path_or_paths)
  if not paths:
    raise ValueError("No results files given.")
  columns, parts, owner = None, [], {}
  for path in paths:
    with open(path, "rb") as f:
      scan = _scan(f.read(), path, columns)
    if scan.torn:
      logging.warning("%s: ignoring a torn last row (%d bytes).", path, len(scan.torn))
    columns = scan.columns
    for values in scan.rows:
      if values[0] in owner:
        raise ValueError(
            f"idx {values[0]} is in both {owner[values[0]]} and {path}; these files "
            "do not come from disjoint shards of one run.")
      owner[values[0]] = path
    parts.extend(scan.rows)
  parts.sort(key=lambda v: v[0])
  out = {}
  for j, column in enumerate(columns):
    dtype = np.int64 if column in INT_COLUMNS else np.float64
    out[column] = np.array([v[j] for v in parts], dtype=dtype).reshape(len(parts))
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
        f"{correct.shape}.")
  if predict is not None:
    predict = np.asarray(predict)
    if predict.shape != radius.shape:
      raise ValueError("predict must have the shape of radius.")
    correct = correct & (predict != ABSTAIN)
  if radius.size == 0:
    raise ValueError("No results: certified accuracy of zero images is undefined.")
  r = np.asarray(radii, dtype=np.float64)
  if np.isnan(r).any() or (r < 0).any():
    raise ValueError(f"radii must be >= 0, got {radii!r}.")
  certified = np.sort(radius[correct & ~np.isnan(radius)])
  count = certified.size - np.searchsorted(certified, r, side="left")
  acc = count / radius.size
  return float(acc) if acc.ndim == 0 else acc


# --------------------------------------------------------------------------
# Runs.


@dataclasses.dataclass(frozen=True)
class Run:
  """One certification run: one method at one sigma on one dataset."""
  name: str
  dataset: str  # Canonical short name: 'cifar', 'imagenet', ...
  method: str  # 'dssn' | 'ssn' | 'uniform'
  sigma: float
  stabilized: bool
  results: Mapping[str, np.ndarray]  # Columns: at least idx, label, predict, radius, correct.
  seconds_per_image: float | None = None
  source: str = "ours"  # 'ours' or 'reference' (the authors' published runs).

  @property
  def num_images(self) -> int:
    return int(self.results["idx"].size)

  def certified_accuracy(self, radii):
    return certified_accuracy(self.results["radius"], self.results["correct"], radii,
                              predict=self.results["predict"])


_REFERENCE_NAME = re.compile(
    r"^(?P<dataset>cifar|imagenet)_(?P<method>split_derandomized|split|uniform)_"
    r"(?P<sigma>\d+(?:\.\d+)?)(?P<stabilized>_stabilized)?$")
_REFERENCE_METHODS = {"split_derandomized": "dssn", "split": "ssn", "uniform": "uniform"}


def parse_reference_run_name(name: str) -> dict[str, Any]:
  """'cifar_split_derandomized_0.5_stabilized' -> dataset, method, sigma, stabilized."""
  m = _REFERENCE_NAME.match(name)
  if not m:
    raise ValueError(
        f"Unrecognised reference run name {name!r}; expected "
        "{cifar,imagenet}_{split_derandomized,split,uniform}_{sigma}[_stabilized].")
  return {"dataset": m["dataset"], "method": _REFERENCE_METHODS[m["method"]],
          "sigma": float(m["sigma"]), "stabilized": bool(m["stabilized"])}


def _find_one(directory: Path, pattern: str) -> Path:
  found = sorted(directory.glob(pattern))
  if len(found) != 1:
    raise ValueError(f"Expected exactly one {pattern} in {directory}, found {found}.")
  return found[0]


def load_reference_runs(npz_path: str | os.PathLike,
                        runs_json: str | os.PathLike | None = None) -> dict[str, Run]:
  """The authors' published per-image certificates, as runs keyed by name.

  `npz_path`: the certificates archive, or the directory holding it. Seconds
  per image come from `runs_json`, by default the `*runs.json` beside it.
  Image i of a dataset gets idx i (its position in the archive).
  """
  npz_path = Path(npz_path)
  if npz_path.is_dir():
    npz_path = _find_one(npz_path, "*.npz")
  if runs_json is None:
    candidate = npz_path.with_name(npz_path.name.replace("certificates.npz", "runs.json"))
    runs_json = candidate if candidate.exists() else None
    if runs_json is None:
      found = sorted(npz_path.parent.glob("*runs.json"))
      runs_json = found[0] if len(found) == 1 else None
  timing = {}
  if runs_json is not None:
    with open(runs_json) as f:
      timing = json.load(f)
  else:
    logging.warning("No runs.json beside %s: no seconds per image.", npz_path)
  runs = {}
  with np.load(npz_path) as archive:
    arrays = {k: archive[k] for k in archive.files}
  names = sorted({k[: -len("__radius_l1")] for k in arrays if k.endswith("__radius_l1")})
  for name in names:
    info = parse_reference_run_name(name)
    label_key = f"{info['dataset']}__labels"
    if label_key not in arrays or f"{name}__predicted" not in arrays:
      raise ValueError(f"{npz_path}: run {name} lacks {label_key} or {name}__predicted.")
    label = arrays[label_key].astype(np.int64)
    predict = arrays[f"{name}__predicted"].astype(np.int64)
    radius = arrays[f"{name}__radius_l1"].astype(np.float64)
    if not label.shape == predict.shape == radius.shape:
      raise ValueError(f"{npz_path}: run {name} has arrays of different lengths.")
    seconds = timing.get(name, {}).get("seconds_per_image")
    images = timing.get(name, {}).get("images")
    if images is not None and images != label.size:
      raise ValueError(f"{runs_json}: {name} has {images} images, the archive {label.size}.")
    results = {"idx": np.arange(label.size, dtype=np.int64), "label": label,
               "predict": predict, "radius": radius, "correct": predict == label}
    runs[name] = Run(name=name, results=results, source="reference",
                     seconds_per_image=None if seconds is None else float(seconds), **info)
  if not runs:
    raise ValueError(f"{npz_path}: no runs (no NAME__radius_l1 arrays).")
  return runs


def expand_result_paths(specs: str | Sequence[str]) -> list[Path]:
  """Results files from comma-separated files, directories (all *.tsv below) or globs."""
  if isinstance(specs, (str, os.PathLike)):
    specs = [s for s in os.fspath(specs).split(",")]
  paths = []
  for spec in specs:
    spec = os.fspath(spec).strip()
    if not spec:
      continue
    path = Path(spec).expanduser()
    if path.is_dir():
      found = sorted(path.rglob("*.tsv"))
    elif path.is_file():
      found = [path]
    elif glob_lib.has_magic(spec):
      found = sorted(Path(p) for p in glob_lib.glob(os.path.expanduser(spec), recursive=True))
      found = [p for p in found if p.is_file()]
    else:
      raise FileNotFoundError(f"No results file or directory {spec!r}.")
    if not found:
      raise ValueError(f"No results files (*.tsv) match {spec!r}.")
    paths.extend(p for p in found if p not in paths)
  return paths


def load_result_runs(paths: str | os.PathLike | Sequence[str | os.PathLike],
                     source: str = "ours") -> dict[str, Run]:
  """Our results files, grouped into runs by their metadata sidecars.

  Files are grouped by (dataset, method, sigma, stabilized) read from the
  metadata (`dataset` and `stabilized` are optional, `sigma` is required), so
  the per-process files of one run are merged. Files of one group must agree
  on all other metadata except PER_PROCESS_KEYS.
  """
  groups: dict[tuple, list[tuple[Path, dict]]] = collections.defaultdict(list)
  for path in _as_paths(paths):
    meta = read_metadata(path)
    run_meta = meta.get("run") or {}
    if "sigma" not in run_meta:
      raise ValueError(f"{metadata_path(path)}: run metadata has no 'sigma'.")
    key = (normalize_dataset(run_meta.get("dataset", "unknown")), meta["method"],
           float(run_meta["sigma"]), bool(run_meta.get("stabilized", False)))
    for other_path, other in groups[key]:
      problems = _diff(other, run_meta, ignore=PER_PROCESS_KEYS)
      if problems:
        raise ValueError(
            f"{other_path} and {path} have the same dataset, method and sigma but "
            "different run metadata: " + "; ".join(problems) + ". Analyse them "
            "separately.")
    groups[key].append((path, run_meta))
  runs = {}
  for (dataset, method, sigma, stabilized), members in sorted(groups.items()):
    results = read_results([p for p, _ in members])
    if results["idx"].size == 0:
      logging.warning("Skipping run with no rows yet: %s", [str(p) for p, _ in members])
      continue
    name = f"{dataset}_{method}_{format_sigma(sigma)}" + ("_stabilized" if stabilized else "")
    runs[name] = Run(name=name, dataset=dataset, method=method, sigma=sigma,
                     stabilized=stabilized, results=results, source=source,
                     seconds_per_image=float(results["time"].mean()))
  return runs


# --------------------------------------------------------------------------
# Tables.


@dataclasses.dataclass(frozen=True)
class BestOverSigma:
  """Best certified accuracy at one radius over the sigmas of one method."""
  radius: float
  accuracy: float
  sigma: float | None  # None when no run certifies anything at this radius.
  clean_accuracy: float | None  # Certified accuracy at r = 0 of that run.
  run: str | None


def _group_key(run: Run) -> tuple:
  return (run.dataset, run.source != "reference", METHODS.index(run.method)
          if run.method in METHODS else len(METHODS), run.method, run.stabilized)


def group_runs(runs: Iterable[Run]) -> dict[tuple, list[Run]]:
  """Runs grouped by (dataset, source, method, stabilized), each sorted by sigma."""
  groups = collections.defaultdict(list)
  for run in sorted(runs, key=lambda r: (_group_key(r), r.sigma)):
    groups[(run.dataset, run.source, run.method, run.stabilized)].append(run)
  return dict(groups)


def best_over_sigma(runs: Sequence[Run], radii=DEFAULT_RADII) -> list[BestOverSigma]:
  """For each radius, the run with the highest certified accuracy (the paper's Table 1).

  Ties go to the smallest sigma.
  """
  runs = sorted(runs, key=lambda r: r.sigma)
  if not runs:
    raise ValueError("No runs.")
  table = np.array([np.atleast_1d(r.certified_accuracy(radii)) for r in runs])
  out = []
  for j, radius in enumerate(np.atleast_1d(np.asarray(radii, dtype=float))):
    i = int(np.argmax(table[:, j]))  # First maximum: smallest sigma.
    if table[i, j] == 0:
      out.append(BestOverSigma(float(radius), 0.0, None, None, None))
      continue
    run = runs[i]
    out.append(BestOverSigma(float(radius), float(table[i, j]), run.sigma,
                             run.certified_accuracy(0.0), run.name))
  return out


def _pct(x: float) -> str:
  return f"{100 * x:.2f}%"


def _r(r: float) -> str:
  return f"{r:g}"


def _group_label(dataset, source, method, stabilized, with_source=True) -> str:
  label = METHOD_NAMES.get(method, method)
  if stabilized:
    label += " +stability training"
  if with_source:
    label += " [published]" if source == "reference" else " [ours]"
  return label


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def table1_markdown(runs: Iterable[Run], radii=DEFAULT_RADII) -> str:
  """The paper's Table 1: per method, best certified accuracy over sigma at each radius.

  Cell: `best% (clean% @ sigma=s)`, clean = certified accuracy at r = 0 of the
  run achieving the best.
  """
  groups = group_runs(runs)
  sources = {key[1] for key in groups}
  rows = []
  for (dataset, source, method, stabilized), members in groups.items():
    cells = []
    for best in best_over_sigma(members, radii):
      if best.sigma is None:
        cells.append(_pct(0.0))
      else:
        cells.append(f"{_pct(best.accuracy)} ({_pct(best.clean_accuracy)} "
                     f"@ σ={format_sigma(best.sigma)})")
    sigmas = sorted(r.sigma for r in members)
    span = (f"σ = {format_sigma(sigmas[0])}" if len(sigmas) == 1 else
            f"{len(sigmas)} σ in [{format_sigma(sigmas[0])}, {format_sigma(sigmas[-1])}]")
    rows.append([_group_label(dataset, source, method, stabilized, len(sources) > 1)
                 + f" ({span})"] + cells)
  return _md_table(["Method"] + [f"r = {_r(r)}" for r in radii], rows)


def certified_accuracy_markdown(runs: Iterable[Run], radii=DEFAULT_RADII) -> str:
  """Certified accuracy at each radius for every run (r = 0 is the clean accuracy)."""
  radii = tuple(radii) if 0.0 in tuple(radii) else (0.0,) + tuple(radii)
  rows = []
  for (dataset, source, method, stabilized), members in group_runs(runs).items():
    for run in members:
      acc = np.atleast_1d(run.certified_accuracy(radii))
      rows.append([run.name, "published" if source == "reference" else "ours",
                   METHOD_NAMES.get(method, method), "yes" if stabilized else "no",
                   format_sigma(run.sigma), str(run.num_images)]
                  + [f"{100 * a:.2f}" for a in acc])
  return _md_table(["run", "source", "method", "stability", "σ", "images"]
                   + [f"r = {_r(r)} (%)" for r in radii], rows)


def seconds_per_image_markdown(runs: Iterable[Run]) -> str:
  """Mean certification seconds per image against sigma, one column per method."""
  groups = {k: v for k, v in group_runs(runs).items()
            if any(r.seconds_per_image is not None for r in v)}
  if not groups:
    return "No timing data.\n"
  sources = {key[1] for key in groups}
  sigmas = sorted({r.sigma for v in groups.values() for r in v})
  header = ["σ"] + [_group_label(*k, with_source=len(sources) > 1) for k in groups]
  rows = []
  for sigma in sigmas:
    row = [format_sigma(sigma)]
    for members in groups.values():
      match = [r for r in members if r.sigma == sigma and r.seconds_per_image is not None]
      row.append(f"{match[0].seconds_per_image:.4g}" if match else "")
    rows.append(row)
  return _md_table(header, rows)


# --------------------------------------------------------------------------
# Plots (matplotlib, Agg canvas; no pyplot global state).

_METHOD_COLORS = {"dssn": "tab:red", "ssn": "tab:green", "uniform": "tab:blue"}


def _figure(figsize=(7.0, 4.8)):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=figsize, layout="constrained")
  return fig, fig.subplots()


def _radius_grid(runs: Sequence[Run], radii) -> np.ndarray:
  rmax = max(float(np.max(radii, initial=0.0)), 0.0)
  for run in runs:
    certified = run.results["radius"][run.results["correct"]]
    if certified.size:
      rmax = max(rmax, float(certified.max()))
  return np.linspace(0.0, max(rmax * 1.03, 0.1), 600)


def _envelope(runs: Sequence[Run], grid: np.ndarray) -> np.ndarray:
  return np.max([np.atleast_1d(r.certified_accuracy(grid)) for r in runs], axis=0)


def plot_certified_accuracy(runs: Sequence[Run], path: str | os.PathLike,
                            title: str, radii=DEFAULT_RADII) -> Path:
  """Certified accuracy vs radius: one curve per sigma and the best-over-sigma envelope."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  runs = sorted(runs, key=lambda r: r.sigma)
  grid = _radius_grid(runs, radii)
  fig, ax = _figure()
  cmap = matplotlib.colormaps["viridis"]
  for i, run in enumerate(runs):
    color = cmap(0.9 * i / max(len(runs) - 1, 1))  # Skip the palest yellow.
    ax.plot(grid, 100 * run.certified_accuracy(grid), color=color, lw=1.2,
            label=f"σ = {format_sigma(run.sigma)}")
  ax.plot(grid, 100 * _envelope(runs, grid), color="black", lw=2.2, ls="--",
          label="best over σ")
  ax.set_xlabel(r"$\ell_1$ radius $r$")
  ax.set_ylabel("certified accuracy (%)")
  ax.set_title(title)
  ax.set_xlim(0, grid[-1])
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2 if len(runs) > 8 else 1, loc="upper right")
  return _save(fig, path)


def plot_envelopes(groups: Mapping[tuple, Sequence[Run]], path: str | os.PathLike,
                   title: str, radii=DEFAULT_RADII) -> Path:
  """Best-over-sigma certified accuracy of each method (DSSN vs baselines) on one plot."""
  all_runs = [r for v in groups.values() for r in v]
  grid = _radius_grid(all_runs, radii)
  sources = {key[1] for key in groups}
  fig, ax = _figure()
  for key, members in groups.items():
    dataset, source, method, stabilized = key
    ax.plot(grid, 100 * _envelope(members, grid), lw=2,
            color=_METHOD_COLORS.get(method),
            ls="--" if source == "reference" and len(sources) > 1 else "-",
            label=_group_label(*key, with_source=len(sources) > 1))
  ax.set_xlabel(r"$\ell_1$ radius $r$")
  ax.set_ylabel("certified accuracy, best over σ (%)")
  ax.set_title(title)
  ax.set_xlim(0, grid[-1])
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper right")
  return _save(fig, path)


def plot_seconds_per_image(groups: Mapping[tuple, Sequence[Run]],
                           path: str | os.PathLike, title: str) -> Path:
  """Certification seconds per image vs sigma, one line per method (log scale)."""
  sources = {key[1] for key in groups}
  fig, ax = _figure()
  for key, members in groups.items():
    dataset, source, method, stabilized = key
    timed = [r for r in members if r.seconds_per_image is not None]
    if not timed:
      continue
    ax.plot([r.sigma for r in timed], [r.seconds_per_image for r in timed],
            marker="o" if not stabilized else "s", ms=4,
            color=_METHOD_COLORS.get(method), ls=":" if stabilized else "-",
            label=_group_label(*key, with_source=len(sources) > 1))
  ax.set_yscale("log")
  ax.set_xlabel("σ")
  ax.set_ylabel("seconds per image (log scale)")
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  return _save(fig, path)


def _save(fig, path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  return path


# --------------------------------------------------------------------------
# The whole analysis (experiments/analyze.py).


def _slug(*parts) -> str:
  return "_".join(re.sub(r"[^A-Za-z0-9._]+", "-", str(p)) for p in parts if p)


def analyze(results: str | Sequence[str] = (), reference: str | os.PathLike | None = None,
            outdir: str | os.PathLike = ".", dataset: str | None = None,
            radii=DEFAULT_RADII) -> str:
  """Writes tables.md and PNG plots into `outdir`; returns the markdown.

  `results`: our results files, directories (every *.tsv below) or globs,
  grouped into runs by their metadata. `reference`: the published
  certificates (.npz or its directory). `dataset`: keep only this dataset
  ('cifar', 'imagenet', ...; aliases like 'cifar10' work).
  """
  radii = tuple(float(r) for r in radii)
  if not radii or any(not math.isfinite(r) or r < 0 for r in radii):
    raise ValueError(f"radii must be finite and >= 0, got {radii}.")
  runs: list[Run] = []
  if reference:
    runs += load_reference_runs(reference).values()
  if isinstance(results, (str, os.PathLike)):
    results = [results]
  results = [s for s in results if os.fspath(s).strip()]
  if results:
    runs += load_result_runs(expand_result_paths(results)).values()
  if not results and not reference:
    raise ValueError("Nothing to analyse: pass results files and/or the reference.")
  if dataset:
    wanted = normalize_dataset(dataset)
    available = sorted({r.dataset for r in runs})
    runs = [r for r in runs if r.dataset == wanted]
    if not runs:
      raise ValueError(f"No runs for dataset {dataset!r}; available: {available}.")
  outdir = Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  sections = ["# Certified l1 robustness\n"]
  for ds in sorted({r.dataset for r in runs}):
    ds_runs = [r for r in runs if r.dataset == ds]
    ds_name = DATASET_NAMES.get(ds, ds)
    groups = group_runs(ds_runs)
    plots = []
    for key, members in groups.items():
      _, source, method, stabilized = key
      label = _group_label(*key, with_source=True)
      plots.append(plot_certified_accuracy(
          members, outdir / (_slug("certified", ds, source, method,
                                   "stabilized" if stabilized else "") + ".png"),
          f"{ds_name}: {label}", radii))
    for stabilized in (False, True):
      subset = {k: v for k, v in groups.items() if k[3] == stabilized}
      if subset:
        suffix = " (stability training)" if stabilized else ""
        plots.append(plot_envelopes(
            subset, outdir / (_slug("envelopes", ds, "stabilized" if stabilized else "")
                              + ".png"),
            f"{ds_name}: DSSN vs randomized baselines, best over σ{suffix}", radii))
    if any(r.seconds_per_image is not None for r in ds_runs):
      plots.append(plot_seconds_per_image(
          groups, outdir / (_slug("seconds_per_image", ds) + ".png"),
          f"{ds_name}: certification time per image"))
    sections += [
        f"## {ds_name}\n",
        "### Best certified accuracy over σ (Table 1 format)\n",
        "Cell: best certified accuracy (certified accuracy at r = 0 of that run @ "
        "its σ). An image is certified at r when predict == label and radius >= r; "
        "abstentions never count (the paper's clean accuracy of randomized runs "
        "counts the top class of abstentions too, so it is higher than r = 0 here).\n",
        table1_markdown(ds_runs, radii),
        "### Certified accuracy per run (%)\n",
        certified_accuracy_markdown(ds_runs, radii),
        "### Seconds per image\n",
        seconds_per_image_markdown(ds_runs),
        "### Plots\n",
        "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n",
    ]
  markdown = "\n".join(sections)
  (outdir / "tables.md").write_text(markdown)
  return markdown
