"""The metadata sidecar of a results file: which run its rows belong to.

Next to each results file ``X`` lives ``X.meta.json``, always replaced
atomically (written to a temporary file, fsynced, renamed, directory
fsynced), so a kill leaves the old sidecar or the new one, never a mix:

    {"format_version": 2, "method": "dssn", "columns": [...],
     "run": {sigma, q, checkpoint fingerprint, dataset, subset, ...},
     "digest": {per-row sha256s, ...},
     "batching": [...], "computation": [...]}

`run` (the caller's run metadata) identifies the run: a file is only ever
appended to by a run with identical `run` and `method`, so two runs are never
mixed in one file. Other top-level fields (`update_metadata`) record how the
rows were computed and may grow; `digest` (results_integrity.py) is
rewritten before each batch of rows is appended.

Pure standard library and NumPy (for NumPy values in the run metadata).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np

from dssn_jax.runs import results_format
from dssn_jax.runs import results_integrity

META_SUFFIX = ".meta.json"
# 1: no digest (still read, cross-checked only); 2: the rows' digest.
FORMAT_VERSION = 2
_MISSING = "<missing>"


def metadata_path(path: str | os.PathLike) -> Path:
  """The metadata sidecar of results file `path`: `path + '.meta.json'`."""
  return Path(os.fspath(path) + META_SUFFIX)


def new_metadata(method: str, run_metadata: Mapping[str, Any]) -> dict:
  """The sidecar of a new results file of `method` for a run (canonical),
  with the digest of no rows (results_integrity.py)."""
  meta = {
      "format_version": FORMAT_VERSION,
      "method": method,
      "columns": list(results_format.columns_for(method)),
      "run": canonical(dict(run_metadata)),
  }
  meta["digest"] = results_integrity.new_digest(meta)
  return meta


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


def canonical(obj: Any) -> Any:
  """JSON round trip, so metadata compares the same before and after saving
  (tuples become lists, NumPy scalars Python numbers, keys sorted)."""
  return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def fsync_dir(directory: str | os.PathLike) -> None:
  """Makes a directory's entries (a created or renamed file) durable."""
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


def atomic_write_json(path: Path, obj: Any) -> None:
  """Replaces `path` with `obj` as JSON, durably and atomically."""
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
  fsync_dir(path.parent)


def _unlink_quietly(path: str | os.PathLike) -> None:
  try:
    os.unlink(path)
  except OSError:
    pass


def read_metadata(path: str | os.PathLike) -> dict:
  """The sidecar of results file `path`: {'format_version', 'method',
  'columns', 'run'} and any recorded fields."""
  meta_path = metadata_path(path)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{path} has no metadata sidecar {meta_path.name}; it was not written "
        "by dssn_jax.runs.results_writer.ResultsWriter."
    ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_path}: not valid JSON ({e}).") from None
  if not isinstance(meta, dict) or not {"method", "run"} <= meta.keys():
    raise ValueError(f"{meta_path}: not a results metadata file.")
  version = meta.get("format_version", 1)
  if version not in (1, FORMAT_VERSION):
    raise ValueError(
        f"{meta_path}: format version {version!r}; this dssn-jax reads "
        f"versions 1 and {FORMAT_VERSION}."
    )
  return meta


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
      stored.get("run") or {}, canonical(dict(run_metadata))
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
  meta.update(canonical(fields))
  atomic_write_json(metadata_path(path), meta)
