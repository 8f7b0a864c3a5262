"""Certification runs as the reports see them, and loading ours.

A `CertifiedRun` is one method at one sigma on one dataset, with or without
stability training: its per-image certificates (the columns of
dssn_jax/runs/results_format.py) and its mean seconds per image.
`load_result_runs` groups our results files into runs by their metadata
sidecars, merging the per-process files of one run; the authors' published
runs load as `CertifiedRun`s too (`reference_archive.load_reference_runs`),
so that both compare in one report. A randomized run's file also records
the top-2 and box-constrained certificates of its counts (core/box.py);
`certificate_variants` gives each as a run of its own, beside the paper's.
(A `jobs.StudyRun` is one classifier of a
study to train and certify; a `training.loop.TrainingRun` one training.)

Pure NumPy: nothing here imports JAX, TensorFlow or matplotlib.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import glob as glob_lib
import os
from pathlib import Path
from typing import Any

from absl import logging
import numpy as np

from dssn_jax.core import methods
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader

DATASET_NAMES = {"cifar": "CIFAR-10", "imagenet": "ImageNet"}
_DATASET_ALIASES = {
    "cifar10": "cifar",
    "cifar-10": "cifar",
    "cifar_10": "cifar",
    "imagenet2012": "imagenet",
    "imagenet-1k": "imagenet",
    "ilsvrc2012": "imagenet",
}
# Run-metadata fields that may legitimately differ between the files of one
# run (one file per process of a multi-host run).
PER_PROCESS_KEYS = frozenset(
    {
        "process_index",
        "process_count",
        "num_processes",
        "host",
        "hostname",
        "pid",
        "shard_index",
        "num_shards",
        "start_time",
        "created",
        "created_at",
    }
)


def normalize_dataset(name: Any) -> str:
  """Canonical short dataset name: 'cifar10' -> 'cifar', 'imagenet2012' ->
  'imagenet'."""
  name = str(name).strip().lower()
  return _DATASET_ALIASES.get(name, name)


def format_sigma(sigma: float) -> str:
  """0.15 -> '0.15', 1 -> '1.0' (the paper's spelling)."""
  text = f"{float(sigma):g}"
  return text if any(c in text for c in ".en") else text + ".0"


@dataclasses.dataclass(frozen=True)
class CertifiedRun:
  """The certificates of one run: one method at one sigma on one dataset.

  Attributes:
    name: e.g. 'cifar_dssn_0.5' (ours) or 'cifar_split_derandomized_0.5'
      (the authors').
    dataset: canonical short name ('cifar', 'imagenet', ...).
    method: a name of `core.methods` ('dssn', 'ssn', 'uniform').
    sigma: the noise level, [0, 1] pixel units.
    stabilized: whether the classifier was trained with stability training.
    results: per-image columns, each (M,): at least idx, label, predict,
      radius (l1, [0, 1] pixel units; negative where a randomized certifier
      abstained) and correct.
    seconds_per_image: mean certification seconds per image, if known.
    source: 'ours' or 'reference' (the authors' published runs).
    metadata: the run metadata of our results files ({} for the authors').
    certificate: which of the method's certificates `results` holds in
      predict, radius and correct (`methods.Certificate.kind`: 'paper', or
      'top2' / 'box' for a `certificate_variants` run).
  """

  name: str
  dataset: str
  method: str
  sigma: float
  stabilized: bool
  results: Mapping[str, np.ndarray]
  seconds_per_image: float | None = None
  source: str = "ours"
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  certificate: str = "paper"

  @property
  def label(self) -> str:
    """Its method and certificate in tables and legends."""
    return methods.method(self.method).certificate(self.certificate).label

  @property
  def num_images(self) -> int:
    return int(self.results["idx"].size)

  @property
  def requested_radii(self) -> tuple[float, ...] | None:
    """The radii a deciding run answers at (`methods.Method.decides`);
    None for a run that certifies every radius."""
    if self.source != "ours" or not methods.method(self.method).decides:
      return None
    return tuple(float(r) for r in self.metadata["radii"])

  def certified_accuracy(self, radii):
    """Fraction of images correct with radius >= r, for each r of radii;
    NaN at a radius a deciding run was not asked (it knows nothing there:
    its radius column is the largest requested radius certified)."""
    accuracy = results_reader.certified_accuracy(
        self.results["radius"],
        self.results["correct"],
        radii,
        predict=self.results["predict"],
    )
    if self.requested_radii is None:
      return accuracy
    asked = np.isin(np.asarray(radii, np.float64), self.requested_radii)
    return np.where(asked, accuracy, np.nan)


# (dataset, source, method, stabilized, certificate): the runs of one curve
# or table row.
GroupKey = tuple[str, str, str, bool, str]


def _group_order(run: CertifiedRun) -> tuple:
  """Datasets, then the published runs first, then methods in table order,
  each method's certificates after its stabilized runs."""
  method = methods.method(run.method)
  return (
      run.dataset,
      run.source != "reference",
      methods.METHODS.index(run.method),
      method.certificates.index(method.certificate(run.certificate)),
      run.stabilized,
  )


def group_runs(runs: Iterable[CertifiedRun]) -> dict[GroupKey, list]:
  """Runs grouped by (dataset, source, method, stabilized, certificate), each
  sorted by sigma."""
  groups = collections.defaultdict(list)
  for run in sorted(runs, key=lambda r: (_group_order(r), r.sigma)):
    key = (run.dataset, run.source, run.method, run.stabilized)
    groups[key + (run.certificate,)].append(run)
  return dict(groups)


def certificate_variants(run: CertifiedRun) -> list[CertifiedRun]:
  """The other certificates `run`'s results hold, each as a run: predict,
  radius and correct those of the certificate (`methods.Certificate`), the
  other columns shared. [] for DSSN, the authors' runs and files written
  before the top-2 and box columns were recorded (`lacks_variants`)."""
  method = methods.method(run.method)
  out = []
  for cert in method.certificates_in(run.results):
    if cert.kind == run.certificate:
      continue
    predict = run.results[cert.predict_column]
    results = {
        **run.results,
        "predict": predict,
        "radius": run.results[cert.radius_column],
        "correct": predict == run.results["label"],
    }
    out.append(
        dataclasses.replace(
            run,
            name=f"{run.name}_{cert.kind}",
            results=results,
            certificate=cert.kind,
        )
    )
  return out


def lacks_variants(run: CertifiedRun) -> bool:
  """Whether our run's method has certificates its file does not record (a
  file written before the top-2 and box columns existed)."""
  method = methods.method(run.method)
  return run.source == "ours" and len(
      method.certificates_in(run.results)
  ) < len(method.certificates)


def expand_result_paths(specs: str | Sequence[str]) -> list[Path]:
  """Results files from comma-separated files, directories (all *.tsv below)
  or globs."""
  if isinstance(specs, (str, os.PathLike)):
    specs = os.fspath(specs).split(",")
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
      found = sorted(
          Path(p)
          for p in glob_lib.glob(os.path.expanduser(spec), recursive=True)
      )
      found = [p for p in found if p.is_file()]
    else:
      raise FileNotFoundError(f"No results file or directory {spec!r}.")
    if not found:
      raise ValueError(f"No results files (*.tsv) match {spec!r}.")
    paths.extend(p for p in found if p not in paths)
  return paths


def _run_key(path: Path, meta: Mapping[str, Any]) -> tuple:
  """(dataset, method, sigma, stabilized) of one results file."""
  run_meta = meta.get("run") or {}
  if "sigma" not in run_meta:
    raise ValueError(
        f"{results_metadata.metadata_path(path)}: run metadata has no 'sigma'."
    )
  return (
      normalize_dataset(run_meta.get("dataset", "unknown")),
      meta["method"],
      float(run_meta["sigma"]),
      bool(run_meta.get("stabilized", False)),
  )


def _files_by_run(paths) -> dict[tuple, list[tuple[Path, dict]]]:
  """Results files grouped by `_run_key`, with their run metadata; the
  files of one run must agree on all of it but PER_PROCESS_KEYS."""
  groups: dict[tuple, list[tuple[Path, dict]]] = collections.defaultdict(list)
  for path in results_reader.as_paths(paths):
    meta = results_metadata.read_metadata(path)
    key = _run_key(path, meta)
    run_meta = meta.get("run") or {}
    for other_path, other in groups[key]:
      problems = results_metadata.diff_metadata(
          other, run_meta, ignore=PER_PROCESS_KEYS
      )
      if problems:
        raise ValueError(
            f"{other_path} and {path} have the same dataset, method and "
            "sigma but different run metadata: " + "; ".join(problems) + ". "
            "Analyse them separately."
        )
    groups[key].append((path, run_meta))
  return groups


def load_result_runs(
    paths: str | os.PathLike | Sequence[str | os.PathLike], source: str = "ours"
) -> dict[str, CertifiedRun]:
  """Our results files, grouped into runs by their metadata sidecars.

  Files are grouped by (dataset, method, sigma, stabilized) read from the
  metadata (`dataset` and `stabilized` are optional, `sigma` is required), so
  the per-process files of one run are merged. Files of one group must agree
  on all other metadata except PER_PROCESS_KEYS. Runs without rows yet are
  left out.
  """
  runs = {}
  for key, members in sorted(_files_by_run(paths).items()):
    dataset, method, sigma, stabilized = key
    results = results_reader.read_results([p for p, _ in members])
    if results["idx"].size == 0:
      logging.warning(
          "Skipping run with no rows yet: %s", [str(p) for p, _ in members]
      )
      continue
    name = f"{dataset}_{method}_{format_sigma(sigma)}" + (
        "_stabilized" if stabilized else ""
    )
    runs[name] = CertifiedRun(
        name=name,
        dataset=dataset,
        method=method,
        sigma=sigma,
        stabilized=stabilized,
        results=results,
        source=source,
        seconds_per_image=float(results["time"].mean()),
        metadata=members[0][1],
    )
  return runs
