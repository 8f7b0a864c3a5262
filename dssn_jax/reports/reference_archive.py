"""The archive of the authors' published certificates, from their repository.

Levine & Feizi published, next to their PyTorch code, the per-image results of
every run in `checkpoints/<run>/` of their repository: `labels.npy` (the true
labels), `radius_l1.npy` (the certified l1 radius; negative where a
randomized run abstains), `predicted_labels.npy` (DSSN runs: the smoothed
prediction) or `preds.npy` ((images, classes) selection frequencies of a
randomized run, whose argmax is its prediction) and `time_per.npy` (mean
seconds per image). Their licence does not allow us to redistribute these
files, so `build_reference_archive` repacks them from the user's own clone
into the two files that `load_reference_runs` reads back as
`certified_runs.CertifiedRun`s:

- `levine_feizi_2021_certificates.npz`: per run NAME, `NAME__radius_l1`
  (float64) and `NAME__predicted` (int16); per dataset, `cifar__labels` or
  `imagenet__labels` (int16), the same for every run of that dataset;
- `levine_feizi_2021_runs.json`: per run, `images` and `seconds_per_image`.

Run directories whose names are not `{cifar,imagenet}_{split_derandomized,
split,uniform}_{sigma}[_stabilized]` (`parse_reference_run_name`; the
methods' names there are `core.methods`' `reference_name`s) are skipped.

In the published runs, `predict` is the top class even where a randomized
certifier abstained (its radius is then negative), so `correct.mean()` is
the paper's "clean accuracy" of randomized runs, while certified accuracy at
radius 0 excludes abstentions.

Pure NumPy: no JAX, no TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
from typing import Any

from absl import logging
import numpy as np

from dssn_jax.core import methods
from dssn_jax.reports.certified_runs import CertifiedRun

ARCHIVE_NAME = "levine_feizi_2021_certificates.npz"
RUNS_NAME = "levine_feizi_2021_runs.json"

# The authors' method names, in the order of `core.methods`.
_AUTHORS_METHOD_NAMES = tuple(
    methods.method(name).reference_name
    for name in methods.METHODS
    if methods.method(name).reference_name
)
_REFERENCE_NAME = re.compile(
    r"^(?P<dataset>cifar|imagenet)_"
    rf"(?P<method>{'|'.join(_AUTHORS_METHOD_NAMES)})_"
    r"(?P<sigma>\d+(?:\.\d+)?)(?P<stabilized>_stabilized)?$"
)


def parse_reference_run_name(name: str) -> dict[str, Any]:
  """'cifar_split_derandomized_0.5_stabilized' -> dataset, method, sigma,
  stabilized (the method as `core.methods` names it: 'dssn')."""
  m = _REFERENCE_NAME.match(name)
  if not m:
    raise ValueError(
        f"Unrecognised reference run name {name!r}; expected "
        f"{{cifar,imagenet}}_{{{','.join(_AUTHORS_METHOD_NAMES)}}}_{{sigma}}"
        "[_stabilized]."
    )
  return {
      "dataset": m["dataset"],
      "method": methods.by_reference_name(m["method"]).name,
      "sigma": float(m["sigma"]),
      "stabilized": bool(m["stabilized"]),
  }


def _run_dirs(authors_repo: Path) -> list[Path]:
  """The run directories under the repository's checkpoints/ (or under
  authors_repo itself, when it is that checkpoints/ directory)."""
  root = authors_repo / "checkpoints"
  if not root.is_dir():
    root = authors_repo
  if not root.is_dir():
    raise FileNotFoundError(
        f"{authors_repo} is not a directory; pass the clone of "
        f"https://github.com/alevine0/smoothingSplittingNoise (or its "
        f"checkpoints/ directory)."
    )
  return sorted(
      p
      for p in root.iterdir()
      if p.is_dir() and (p / "radius_l1.npy").is_file()
  )


def _prediction(run_dir: Path) -> np.ndarray:
  """The smoothed prediction of one run, (images,) int64."""
  if (run_dir / "predicted_labels.npy").is_file():
    return np.load(run_dir / "predicted_labels.npy").astype(np.int64)
  if (run_dir / "preds.npy").is_file():
    frequencies = np.load(run_dir / "preds.npy")
    if frequencies.ndim != 2:
      raise ValueError(
          f"{run_dir / 'preds.npy'} has shape "
          f"{frequencies.shape}; expected (images, classes)."
      )
    return frequencies.argmax(axis=1)  # First class on ties, as selected.
  raise ValueError(
      f"{run_dir} has neither predicted_labels.npy nor "
      f"preds.npy: not a run directory of the authors' code."
  )


def _as_labels(values: np.ndarray, path: Path) -> np.ndarray:
  """Whole-number class indices (saved as float64 by their code) as int16."""
  labels = np.asarray(values)
  if labels.ndim != 1 or not np.all(labels == np.round(labels)):
    raise ValueError(f"{path}: expected one whole-number label per image.")
  return labels.astype(np.int16)


def build_reference_archive(
    authors_repo: str | os.PathLike, outdir: str | os.PathLike
) -> Path:
  """Repacks the authors' per-run arrays into the archive of the analysis.

  Args:
    authors_repo: a clone of the authors' repository (or its checkpoints/).
    outdir: where the .npz and the runs .json go (created if needed).

  Returns:
    The path of the written .npz archive.

  Raises:
    FileNotFoundError: authors_repo does not exist.
    ValueError: no run directory, inconsistent array lengths, or runs of one
      dataset with different labels.
  """
  authors_repo, outdir = Path(authors_repo), Path(outdir)
  arrays: dict[str, np.ndarray] = {}
  runs: dict[str, dict] = {}
  for run_dir in _run_dirs(authors_repo):
    name = run_dir.name
    try:
      dataset = parse_reference_run_name(name)["dataset"]
    except ValueError:
      logging.info("Skipping %s: not a run name of the paper.", run_dir)
      continue
    radius = np.load(run_dir / "radius_l1.npy").astype(np.float64)
    predicted = _prediction(run_dir)
    labels = _as_labels(np.load(run_dir / "labels.npy"), run_dir / "labels.npy")
    if not radius.shape == predicted.shape == labels.shape:
      raise ValueError(
          f"{run_dir}: radius_l1 {radius.shape}, predictions "
          f"{predicted.shape} and labels {labels.shape} differ in length."
      )
    label_key = f"{dataset}__labels"
    if label_key in arrays and not np.array_equal(arrays[label_key], labels):
      raise ValueError(
          f"{run_dir}/labels.npy differs from the labels of the other "
          f"{dataset} runs; every run of a dataset certifies the same images."
      )
    arrays[label_key] = labels
    arrays[f"{name}__radius_l1"] = radius
    arrays[f"{name}__predicted"] = predicted.astype(np.int16)
    runs[name] = {"images": int(radius.size)}
    if (run_dir / "time_per.npy").is_file():
      runs[name]["seconds_per_image"] = float(np.load(run_dir / "time_per.npy"))
  if not runs:
    raise ValueError(
        f"No run directories in {authors_repo} (expected checkpoints/<run>/ "
        f"with radius_l1.npy, labels.npy and predictions, runs named like "
        f"cifar_split_derandomized_0.25)."
    )
  outdir.mkdir(parents=True, exist_ok=True)
  archive = outdir / ARCHIVE_NAME
  partial = outdir / (ARCHIVE_NAME + ".tmp.npz")
  np.savez_compressed(partial, **arrays)
  os.replace(partial, archive)
  with open(outdir / (RUNS_NAME + ".tmp"), "w") as f:
    json.dump(runs, f, indent=1, sort_keys=True)
  os.replace(outdir / (RUNS_NAME + ".tmp"), outdir / RUNS_NAME)
  logging.info("Wrote %d runs to %s.", len(runs), archive)
  return archive


def _find_one(directory: Path, pattern: str) -> Path:
  found = sorted(directory.glob(pattern))
  if len(found) != 1:
    raise ValueError(
        f"Expected exactly one {pattern} in {directory}, found {found}."
    )
  return found[0]


def _runs_json_beside(npz_path: Path) -> Path | None:
  """The runs .json written with the archive: its namesake, or the only
  *runs.json in its directory; None without one."""
  candidate = npz_path.with_name(
      npz_path.name.replace("certificates.npz", "runs.json")
  )
  if candidate.exists():
    return candidate
  found = sorted(npz_path.parent.glob("*runs.json"))
  return found[0] if len(found) == 1 else None


def _reference_run(name, arrays, timing, npz_path, runs_json) -> CertifiedRun:
  """Run `name` of the archive's arrays, with its entry of the runs .json."""
  info = parse_reference_run_name(name)
  label_key = f"{info['dataset']}__labels"
  if label_key not in arrays or f"{name}__predicted" not in arrays:
    raise ValueError(
        f"{npz_path}: run {name} lacks {label_key} or {name}__predicted."
    )
  label = arrays[label_key].astype(np.int64)
  predict = arrays[f"{name}__predicted"].astype(np.int64)
  radius = arrays[f"{name}__radius_l1"].astype(np.float64)
  if not label.shape == predict.shape == radius.shape:
    raise ValueError(f"{npz_path}: run {name} has arrays of different lengths.")
  seconds = timing.get(name, {}).get("seconds_per_image")
  images = timing.get(name, {}).get("images")
  if images is not None and images != label.size:
    raise ValueError(
        f"{runs_json}: {name} has {images} images, the archive {label.size}."
    )
  results = {
      "idx": np.arange(label.size, dtype=np.int64),
      "label": label,
      "predict": predict,
      "radius": radius,
      "correct": predict == label,
  }
  return CertifiedRun(
      name=name,
      results=results,
      source="reference",
      seconds_per_image=None if seconds is None else float(seconds),
      **info,
  )


def load_reference_runs(
    npz_path: str | os.PathLike, runs_json: str | os.PathLike | None = None
) -> dict[str, CertifiedRun]:
  """The authors' published per-image certificates, as runs keyed by name.

  Args:
    npz_path: the certificates archive (ARCHIVE_NAME), or the directory
      holding it.
    runs_json: the seconds per image of the runs (RUNS_NAME); by default the
      `*runs.json` beside the archive.

  Returns:
    Run name -> its `CertifiedRun` (source 'reference'); image i of a
    dataset gets idx i (its position in the archive).

  Raises:
    ValueError: no runs in the archive, a run without its predictions or its
      dataset's labels, or lengths that disagree.
  """
  npz_path = Path(npz_path)
  if npz_path.is_dir():
    npz_path = _find_one(npz_path, "*.npz")
  if runs_json is None:
    runs_json = _runs_json_beside(npz_path)
  timing = {}
  if runs_json is not None:
    with open(runs_json) as f:
      timing = json.load(f)
  else:
    logging.warning("No runs.json beside %s: no seconds per image.", npz_path)
  with np.load(npz_path) as archive:
    arrays = {k: archive[k] for k in archive.files}
  names = sorted(
      {k[: -len("__radius_l1")] for k in arrays if k.endswith("__radius_l1")}
  )
  if not names:
    raise ValueError(f"{npz_path}: no runs (no NAME__radius_l1 arrays).")
  return {
      name: _reference_run(name, arrays, timing, npz_path, runs_json)
      for name in names
  }
