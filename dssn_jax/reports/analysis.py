"""Certified-accuracy analysis of results files: runs, tables, plots.

Our results files (dssn_jax/runs/results.py) are grouped into runs by their
metadata sidecars: one run is one method at one sigma on one dataset, with or
without stability training, its per-process files merged. The authors'
published certificates load as runs too, so both compare in one analysis.
For each dataset, `analyze` writes Markdown tables (the paper's Table 1:
best certified accuracy over sigma at each radius; certified accuracy per run;
seconds per image) and PNG plots.

An image is certified at radius r when predict == label and radius >= r, so an
abstention never counts (`dssn_jax.runs.results.certified_accuracy`). Pure NumPy;
matplotlib is imported only by the plotting functions, and nothing here
imports JAX or TensorFlow.

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
import glob as glob_lib
import json
import math
import os
from pathlib import Path
import re
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import numpy as np

from dssn_jax.runs import results as results_lib
from dssn_jax.core import clopper_pearson

DEFAULT_RADII = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)

METHOD_NAMES = {
    "dssn": "DSSN",
    "ssn": "SSN, independent splits (randomized)",
    "uniform": "Uniform additive noise (randomized)",
}
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
  results: Mapping[
      str, np.ndarray
  ]  # Columns: at least idx, label, predict, radius, correct.
  seconds_per_image: float | None = None
  source: str = "ours"  # 'ours' or 'reference' (the authors' published runs).
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_images(self) -> int:
    return int(self.results["idx"].size)

  def certified_accuracy(self, radii):
    return results_lib.certified_accuracy(
        self.results["radius"],
        self.results["correct"],
        radii,
        predict=self.results["predict"],
    )


_REFERENCE_NAME = re.compile(
    r"^(?P<dataset>cifar|imagenet)_(?P<method>split_derandomized|split|uniform)_"
    r"(?P<sigma>\d+(?:\.\d+)?)(?P<stabilized>_stabilized)?$"
)
_REFERENCE_METHODS = {
    "split_derandomized": "dssn",
    "split": "ssn",
    "uniform": "uniform",
}


def parse_reference_run_name(name: str) -> dict[str, Any]:
  """'cifar_split_derandomized_0.5_stabilized' -> dataset, method, sigma,
  stabilized."""
  m = _REFERENCE_NAME.match(name)
  if not m:
    raise ValueError(
        f"Unrecognised reference run name {name!r}; expected "
        "{cifar,imagenet}_{split_derandomized,split,uniform}_{sigma}[_stabilized]."
    )
  return {
      "dataset": m["dataset"],
      "method": _REFERENCE_METHODS[m["method"]],
      "sigma": float(m["sigma"]),
      "stabilized": bool(m["stabilized"]),
  }


def _find_one(directory: Path, pattern: str) -> Path:
  found = sorted(directory.glob(pattern))
  if len(found) != 1:
    raise ValueError(
        f"Expected exactly one {pattern} in {directory}, found {found}."
    )
  return found[0]


def load_reference_runs(
    npz_path: str | os.PathLike, runs_json: str | os.PathLike | None = None
) -> dict[str, Run]:
  """The authors' published per-image certificates, as runs keyed by name.

  `npz_path`: the certificates archive, or the directory holding it. Seconds
  per image come from `runs_json`, by default the `*runs.json` beside it.
  Image i of a dataset gets idx i (its position in the archive).
  """
  npz_path = Path(npz_path)
  if npz_path.is_dir():
    npz_path = _find_one(npz_path, "*.npz")
  if runs_json is None:
    candidate = npz_path.with_name(
        npz_path.name.replace("certificates.npz", "runs.json")
    )
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
  names = sorted(
      {k[: -len("__radius_l1")] for k in arrays if k.endswith("__radius_l1")}
  )
  for name in names:
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
      raise ValueError(
          f"{npz_path}: run {name} has arrays of different lengths."
      )
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
    runs[name] = Run(
        name=name,
        results=results,
        source="reference",
        seconds_per_image=None if seconds is None else float(seconds),
        **info,
    )
  if not runs:
    raise ValueError(f"{npz_path}: no runs (no NAME__radius_l1 arrays).")
  return runs


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


def load_result_runs(
    paths: str | os.PathLike | Sequence[str | os.PathLike], source: str = "ours"
) -> dict[str, Run]:
  """Our results files, grouped into runs by their metadata sidecars.

  Files are grouped by (dataset, method, sigma, stabilized) read from the
  metadata (`dataset` and `stabilized` are optional, `sigma` is required), so
  the per-process files of one run are merged. Files of one group must agree
  on all other metadata except PER_PROCESS_KEYS.
  """
  groups: dict[tuple, list[tuple[Path, dict]]] = collections.defaultdict(list)
  for path in results_lib.as_paths(paths):
    meta = results_lib.read_metadata(path)
    run_meta = meta.get("run") or {}
    if "sigma" not in run_meta:
      raise ValueError(
          f"{results_lib.metadata_path(path)}: run metadata has no 'sigma'."
      )
    key = (
        normalize_dataset(run_meta.get("dataset", "unknown")),
        meta["method"],
        float(run_meta["sigma"]),
        bool(run_meta.get("stabilized", False)),
    )
    for other_path, other in groups[key]:
      problems = results_lib.diff_metadata(
          other, run_meta, ignore=PER_PROCESS_KEYS
      )
      if problems:
        raise ValueError(
            f"{other_path} and {path} have the same dataset, method and "
            "sigma but different run metadata: " + "; ".join(problems) + ". "
            "Analyse them separately."
        )
    groups[key].append((path, run_meta))
  runs = {}
  for (dataset, method, sigma, stabilized), members in sorted(groups.items()):
    results = results_lib.read_results([p for p, _ in members])
    if results["idx"].size == 0:
      logging.warning(
          "Skipping run with no rows yet: %s", [str(p) for p, _ in members]
      )
      continue
    name = f"{dataset}_{method}_{format_sigma(sigma)}" + (
        "_stabilized" if stabilized else ""
    )
    runs[name] = Run(
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
  methods = results_lib.METHODS
  order = methods.index(run.method) if run.method in methods else len(methods)
  return (
      run.dataset,
      run.source != "reference",
      order,
      run.method,
      run.stabilized,
  )


def group_runs(runs: Iterable[Run]) -> dict[tuple, list[Run]]:
  """Runs grouped by (dataset, source, method, stabilized), each sorted by
  sigma."""
  groups = collections.defaultdict(list)
  for run in sorted(runs, key=lambda r: (_group_key(r), r.sigma)):
    groups[(run.dataset, run.source, run.method, run.stabilized)].append(run)
  return dict(groups)


def best_over_sigma(
    runs: Sequence[Run], radii=DEFAULT_RADII
) -> list[BestOverSigma]:
  """For each radius, the run with the highest certified accuracy (the paper's
  Table 1).

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
    out.append(
        BestOverSigma(
            float(radius),
            float(table[i, j]),
            run.sigma,
            run.certified_accuracy(0.0),
            run.name,
        )
    )
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
  lines = [
      "| " + " | ".join(header) + " |",
      "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def table1_markdown(runs: Iterable[Run], radii=DEFAULT_RADII) -> str:
  """The paper's Table 1: per method, best certified accuracy over sigma at
  each radius.

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
        cells.append(
            f"{_pct(best.accuracy)} ({_pct(best.clean_accuracy)} "
            f"@ σ={format_sigma(best.sigma)})"
        )
    sigmas = sorted(r.sigma for r in members)
    span = (
        f"σ = {format_sigma(sigmas[0])}"
        if len(sigmas) == 1
        else (
            f"{len(sigmas)} σ in [{format_sigma(sigmas[0])}, "
            f"{format_sigma(sigmas[-1])}]"
        )
    )
    rows.append(
        [
            _group_label(dataset, source, method, stabilized, len(sources) > 1)
            + f" ({span})"
        ]
        + cells
    )
  return _md_table(["Method"] + [f"r = {_r(r)}" for r in radii], rows)


def certified_accuracy_markdown(
    runs: Iterable[Run], radii=DEFAULT_RADII
) -> str:
  """Certified accuracy at each radius for every run (r = 0 is the clean
  accuracy)."""
  radii = tuple(radii) if 0.0 in tuple(radii) else (0.0,) + tuple(radii)
  rows = []
  for (dataset, source, method, stabilized), members in group_runs(
      runs
  ).items():
    for run in members:
      acc = np.atleast_1d(run.certified_accuracy(radii))
      rows.append(
          [
              run.name,
              "published" if source == "reference" else "ours",
              METHOD_NAMES.get(method, method),
              "yes" if stabilized else "no",
              format_sigma(run.sigma),
              str(run.num_images),
          ]
          + [f"{100 * a:.2f}" for a in acc]
      )
  return _md_table(
      ["run", "source", "method", "stability", "σ", "images"]
      + [f"r = {_r(r)} (%)" for r in radii],
      rows,
  )


def seconds_per_image_markdown(runs: Iterable[Run]) -> str:
  """Mean certification seconds per image against sigma, one column per
  method."""
  groups = {
      k: v
      for k, v in group_runs(runs).items()
      if any(r.seconds_per_image is not None for r in v)
  }
  if not groups:
    return "No timing data.\n"
  sources = {key[1] for key in groups}
  sigmas = sorted({r.sigma for v in groups.values() for r in v})
  header = ["σ"] + [
      _group_label(*k, with_source=len(sources) > 1) for k in groups
  ]
  rows = []
  for sigma in sigmas:
    row = [format_sigma(sigma)]
    for members in groups.values():
      match = [
          r
          for r in members
          if r.sigma == sigma and r.seconds_per_image is not None
      ]
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
  return np.max(
      [np.atleast_1d(r.certified_accuracy(grid)) for r in runs], axis=0
  )


def plot_certified_accuracy(
    runs: Sequence[Run],
    path: str | os.PathLike,
    title: str,
    radii=DEFAULT_RADII,
) -> Path:
  """Certified accuracy vs radius: one curve per sigma and the best-over-sigma
  envelope."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  runs = sorted(runs, key=lambda r: r.sigma)
  grid = _radius_grid(runs, radii)
  fig, ax = _figure()
  cmap = matplotlib.colormaps["viridis"]
  for i, run in enumerate(runs):
    color = cmap(0.9 * i / max(len(runs) - 1, 1))  # Skip the palest yellow.
    ax.plot(
        grid,
        100 * run.certified_accuracy(grid),
        color=color,
        lw=1.2,
        label=f"σ = {format_sigma(run.sigma)}",
    )
  ax.plot(
      grid,
      100 * _envelope(runs, grid),
      color="black",
      lw=2.2,
      ls="--",
      label="best over σ",
  )
  ax.set_xlabel(r"$\ell_1$ radius $r$")
  ax.set_ylabel("certified accuracy (%)")
  ax.set_title(title)
  ax.set_xlim(0, grid[-1])
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2 if len(runs) > 8 else 1, loc="upper right")
  return _save(fig, path)


def plot_envelopes(
    groups: Mapping[tuple, Sequence[Run]],
    path: str | os.PathLike,
    title: str,
    radii=DEFAULT_RADII,
) -> Path:
  """Best-over-sigma certified accuracy of each method (DSSN vs baselines) on
  one plot."""
  all_runs = [r for v in groups.values() for r in v]
  grid = _radius_grid(all_runs, radii)
  sources = {key[1] for key in groups}
  fig, ax = _figure()
  for key, members in groups.items():
    _, source, method, _ = key
    ax.plot(
        grid,
        100 * _envelope(members, grid),
        lw=2,
        color=_METHOD_COLORS.get(method),
        ls="--" if source == "reference" and len(sources) > 1 else "-",
        label=_group_label(*key, with_source=len(sources) > 1),
    )
  ax.set_xlabel(r"$\ell_1$ radius $r$")
  ax.set_ylabel("certified accuracy, best over σ (%)")
  ax.set_title(title)
  ax.set_xlim(0, grid[-1])
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper right")
  return _save(fig, path)


def plot_seconds_per_image(
    groups: Mapping[tuple, Sequence[Run]], path: str | os.PathLike, title: str
) -> Path:
  """Certification seconds per image vs sigma, one line per method (log
  scale)."""
  sources = {key[1] for key in groups}
  fig, ax = _figure()
  for key, members in groups.items():
    _, _, method, stabilized = key
    timed = [r for r in members if r.seconds_per_image is not None]
    if not timed:
      continue
    ax.plot(
        [r.sigma for r in timed],
        [r.seconds_per_image for r in timed],
        marker="o" if not stabilized else "s",
        ms=4,
        color=_METHOD_COLORS.get(method),
        ls=":" if stabilized else "-",
        label=_group_label(*key, with_source=len(sources) > 1),
    )
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


def at_sample_size(run: Run, n_new: int) -> Run | None:
  """Our randomized run with radii recomputed for n_new samples at the same
  empirical frequencies (`clopper_pearson.radius_at_n`); None for other runs."""
  meta = run.metadata
  if (
      run.source != "ours"
      or run.method == "dssn"
      or "p_lower" not in run.results
      or "n" not in meta
      or "alpha" not in meta
  ):
    return None
  radius = clopper_pearson.radius_at_n(
      run.results["p_lower"],
      int(meta["n"]),
      n_new,
      float(meta["alpha"]),
      math.sqrt(3) * run.sigma,
  )  # lambda of docs/design.md, section 1.
  return dataclasses.replace(run, results={**run.results, "radius": radius})


def analyze(
    results: str | Sequence[str] = (),
    reference: str | os.PathLike | None = None,
    outdir: str | os.PathLike = ".",
    dataset: str | None = None,
    radii=DEFAULT_RADII,
    what_if_n: int | None = None,
) -> str:
  """Writes tables.md and PNG plots into `outdir`; returns the markdown.

  `results`: our results files, directories (every *.tsv below) or globs,
  grouped into runs by their metadata. `reference`: the published
  certificates (.npz or its directory). `dataset`: keep only this dataset
  ('cifar', 'imagenet', ...; aliases like 'cifar10' work). `what_if_n`: also
  tabulate our randomized runs as if their empirical frequencies had been
  observed with that many samples (`at_sample_size`; an estimate).
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
    raise ValueError(
        "Nothing to analyse: pass results files and/or the reference."
    )
  if dataset:
    wanted = normalize_dataset(dataset)
    available = sorted({r.dataset for r in runs})
    runs = [r for r in runs if r.dataset == wanted]
    if not runs:
      raise ValueError(
          f"No runs for dataset {dataset!r}; available: {available}."
      )
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
      plots.append(
          plot_certified_accuracy(
              members,
              outdir
              / (
                  _slug(
                      "certified",
                      ds,
                      source,
                      method,
                      "stabilized" if stabilized else "",
                  )
                  + ".png"
              ),
              f"{ds_name}: {label}",
              radii,
          )
      )
    for stabilized in (False, True):
      subset = {k: v for k, v in groups.items() if k[3] == stabilized}
      if subset:
        suffix = " (stability training)" if stabilized else ""
        plots.append(
            plot_envelopes(
                subset,
                outdir
                / (
                    _slug("envelopes", ds, "stabilized" if stabilized else "")
                    + ".png"
                ),
                f"{ds_name}: DSSN vs randomized baselines, best over σ{suffix}",
                radii,
            )
        )
    if any(r.seconds_per_image is not None for r in ds_runs):
      plots.append(
          plot_seconds_per_image(
              groups,
              outdir / (_slug("seconds_per_image", ds) + ".png"),
              f"{ds_name}: certification time per image",
          )
      )
    sections += [
        f"## {ds_name}\n",
        "### Best certified accuracy over σ (Table 1 format)\n",
        "Cell: best certified accuracy (certified accuracy at r = 0 of that "
        "run @ its σ). An image is certified at r when predict == label and "
        "radius >= r; abstentions never count (the paper's clean accuracy of "
        "randomized runs counts the top class of abstentions too, so it is "
        "higher than r = 0 here).\n",
        table1_markdown(ds_runs, radii),
        "### Certified accuracy per run (%)\n",
        certified_accuracy_markdown(ds_runs, radii),
        "### Seconds per image\n",
        seconds_per_image_markdown(ds_runs),
    ]
    what_if = (
        [
            r
            for r in (at_sample_size(run, what_if_n) for run in ds_runs)
            if r is not None
        ]
        if what_if_n
        else []
    )
    if what_if:
      sections += [
          f"### Randomized runs at N = {what_if_n:,}, same frequencies "
          "(an estimate, not certificates)\n",
          "Each randomized row's count of its selected class is recovered from "
          "its Clopper-Pearson bound and scaled to N; the radius is then "
          "recomputed. Abstentions stay abstentions.\n",
          table1_markdown(what_if, radii),
      ]
    sections += [
        "### Plots\n",
        "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n",
    ]
  markdown = "\n".join(sections)
  (outdir / "tables.md").write_text(markdown)
  return markdown
