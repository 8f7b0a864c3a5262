"""The archive of the authors' published certificates, from their repository.

Levine & Feizi published, next to their PyTorch code, the per-image results of
every run in `checkpoints/<run>/` of their repository: `labels.npy` (the true
labels), `radius_l1.npy` (the certified l1 radius; negative where a
randomized run abstains), `predicted_labels.npy` (DSSN runs: the smoothed
prediction) or `preds.npy` ((images, classes) selection frequencies of a
randomized run, whose argmax is its prediction) and `time_per.npy` (mean
seconds per image). Their licence does not allow us to redistribute these
files, so `build_reference_archive` repacks them from the user's own clone
into the two files `analysis.load_reference_runs` reads:

- `levine_feizi_2021_certificates.npz`: per run NAME, `NAME__radius_l1`
  (float64) and `NAME__predicted` (int16); per dataset, `cifar__labels` or
  `imagenet__labels` (int16), the same for every run of that dataset;
- `levine_feizi_2021_runs.json`: per run, `images` and `seconds_per_image`.

Run directories whose names are not `{cifar,imagenet}_{split_derandomized,
split,uniform}_{sigma}[_stabilized]` (`analysis.parse_reference_run_name`)
are skipped. Pure NumPy: no JAX, no TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from absl import logging
import numpy as np

from dssn_jax.reports import analysis

ARCHIVE_NAME = "levine_feizi_2021_certificates.npz"
RUNS_NAME = "levine_feizi_2021_runs.json"


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
      dataset = analysis.parse_reference_run_name(name)["dataset"]
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
