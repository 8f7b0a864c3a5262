"""Crash-safe appending of per-image rows to a results file.

Rows are appended in batches, each batch followed by flush + fsync. A process
killed mid-batch leaves at most one torn row at the end of the file: an
incomplete last line, without its newline (appends write bytes in order, so a
kill cannot leave a complete line that is not a row). The next
`ResultsWriter` truncates the file back to its last complete row. Complete
rows of a torn batch are kept, and `done_indices` tells the caller which
images to skip. A complete line that is not a valid row, anywhere in the file,
is corruption (or another program's writing): an error naming the line, never
a repair. Before each batch the sidecar records the digest of its rows, and
an existing file is verified against its digest and cross-checked against its
run metadata before anything is appended (results_integrity.py).

An advisory lock keeps a second writer off a file: multi-host runs write one
file per process (e.g. ``certify.tsv``, ``certify.process1.tsv``), which
`results_reader.read_results` merges.

The format is in results_format.py, the metadata sidecar in
results_metadata.py. Pure NumPy.
"""

from __future__ import annotations

import collections
import errno
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from absl import logging
import numpy as np

from dssn_jax.runs import results_format
from dssn_jax.runs import results_integrity
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader

try:  # Advisory lock against two writers on one file; absent on Windows.
  import fcntl
except ImportError:  # pragma: no cover
  fcntl = None


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
    self.columns = results_format.columns_for(method)
    if not isinstance(run_metadata, Mapping):
      raise TypeError("run_metadata must be a dict.")
    self.run_metadata = results_metadata.canonical(dict(run_metadata))
    self._fd: int | None = None
    self._done: set[int] = set()
    self._done_view: frozenset[int] | None = None
    self._line_of: dict[int, int] = {}
    self._broken = False
    self._digest: dict[str, Any] = {}

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

  def open(self) -> "ResultsWriter":
    if self._fd is not None:
      raise RuntimeError(f"{self.path} is already open.")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self.path.exists():
      results_metadata.check_metadata(self.path, self.method, self.run_metadata)
      fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
    else:
      # Sidecar first: a data file never exists without its metadata. A stale
      # sidecar without a data file describes no rows and is replaced.
      results_metadata.atomic_write_json(
          results_metadata.metadata_path(self.path),
          results_metadata.new_metadata(self.method, self.run_metadata),
      )
      fd = os.open(
          self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644
      )
      results_metadata.fsync_dir(self.path.parent)
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
    meta = results_metadata.read_metadata(self.path)  # Before the rows.
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0) if size else b""
    header = results_format.header(self.columns)
    if len(data) < len(header) and header.startswith(data):
      # New file, or killed while writing the header.
      if (meta.get("digest") or {}).get("committed", 0):
        raise ValueError(
            f"{self.path}: line 2: missing; the digest in "
            f"{results_metadata.metadata_path(self.path).name} records "
            f"{meta['digest']['committed']} rows written, the file holds "
            "none (it was emptied). Restore it, or delete it and its sidecar "
            "to start over."
        )
      os.ftruncate(fd, 0)
      self._write_all(fd, header)
      os.fsync(fd)
      self._next_line = 2
      self._done, self._done_view, self._line_of = set(), None, {}
      self._start_digest(meta, [])
      return
    scan = results_format.scan(data, self.path, self.columns)
    run = meta.get("run") or {}
    results_reader.check_subset(
        self.path, [v[0] for v in scan.rows], scan.lines, run
    )
    results_integrity.check_rows(self.path, scan, run, self.method)
    results_integrity.check_digest(self.path, scan, meta)
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
    self._start_digest(meta, scan.rows)

  def _start_digest(self, meta: dict, rows: list[tuple]) -> None:
    """The digest of the file's `rows` (verified), recorded if it changed:
    rows of a batch a kill kept from the file are dropped from it, and a
    file of format version 1 gets its first digest."""
    digest = meta.get("digest")
    if digest is None:
      if rows:
        logging.warning(
            "%s: format version 1, no digest recorded; its %d rows were "
            "cross-checked and the digest starts now.",
            self.path,
            len(rows),
        )
      digest = results_integrity.new_digest(meta)
      digest = {
          **results_integrity.extend_digest(digest, rows),
          "unverified_rows": len(rows),
      }
    hex_digits = results_integrity.ROW_HASH_HEX
    kept = {
        **digest,
        "rows": len(rows),
        "committed": len(rows),
        "row_sha256": digest["row_sha256"][: len(rows) * hex_digits],
    }
    if kept != meta.get("digest") or meta.get("format_version") != (
        results_metadata.FORMAT_VERSION
    ):
      results_metadata.update_metadata(
          self.path,
          digest=kept,
          format_version=results_metadata.FORMAT_VERSION,
      )
    self._digest = kept

  def close(self) -> None:
    if self._fd is not None:
      try:
        if not self._broken and (
            self._digest["committed"] < self._digest["rows"]
        ):  # The last batch is in the file: deleting it is now detected.
          self._digest = {**self._digest, "committed": self._digest["rows"]}
          results_metadata.update_metadata(self.path, digest=self._digest)
      finally:
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
    values = [
        results_format.check_row(row, self.columns)
        for row in self._batch_rows(rows)
    ]
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
    lines = range(self._next_line, self._next_line + len(values))
    results_integrity.check_rows(  # What a reader will check.
        self.path,
        results_format.Scan(self.columns, values, list(lines), 0, b""),
        self.run_metadata,
        self.method,
    )
    data = "".join(results_format.format_row(v) for v in values).encode("ascii")
    # The rows' digest first: a row in the file always has its digest.
    digest = results_integrity.extend_digest(self._digest, values)
    results_metadata.update_metadata(self.path, digest=digest)
    self._digest = digest
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
