"""Tables of the denoised-smoothing study (docs/denoised.md).

Groups of certification runs (one run per sigma), each a row of the paper's
Table 1 format: at each l1 radius, the best certified accuracy over the
group's sigmas, with the clean accuracy and sigma of the run that achieves
it. Rows compare like with like: the main table holds the runs on the full
image set, and runs on a subset of it get a table of their own on that
subset, next to every other run restricted to the same images. JAX-free,
like the rest of `dssn_jax.reports`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import os

import numpy as np

from dssn_jax.reports import certified_runs
from dssn_jax.reports import estimate
from dssn_jax.reports import tables
from dssn_jax.reports.certified_runs import CertifiedRun
from dssn_jax.reports.certified_runs import format_sigma

# The study's layout (experiments/denoised_study.sh).
SIGMAS = ("0.25", "0.5")
# sigma <= 0.5 certifies no l1 radius >= 1 (at most about lambda = 0.87).
RADII = (0.25, 0.5, 0.75)
# The paper's N, for the estimate of what the study's N = 500 costs.
WHAT_IF_N = 100_000
# Row label -> (directory under --reference or --results, name pattern).
ROWS = (
    ("DSSN-trained classifier", "reference", "dssn_{s}"),
    ("Uniform-trained classifier", "reference", "uniform_{s}"),
    (
        "Clean classifier + DnCNN, DSSN noise, MSE",
        "results",
        "den_dssn_mse_{s}",
    ),
    (
        "Clean classifier + DnCNN, DSSN noise, stability",
        "results",
        "den_dssn_stability_{s}",
    ),
    (
        "Clean classifier + DnCNN, uniform noise, MSE",
        "results",
        "den_uniform_mse_{s}",
    ),
    (
        "Clean classifier + DnCNN, uniform noise, stability",
        "results",
        "den_uniform_stability_{s}",
    ),
)


def build_groups(results: str, reference: str) -> dict:
  """Row label -> that row's runs (one per sigma made so far).

  Args:
    results: the directory of the denoised runs (docs/denoised/results).
    reference: the Fashion-MNIST study's (docs/fashion_mnist/results).
  """
  roots = {"reference": reference, "results": results}
  return {
      label: load_group(
          [os.path.join(roots[root], pattern.format(s=s)) for s in SIGMAS]
      )
      for label, root, pattern in ROWS
  }


def load_group(directories: Sequence[str]) -> list[CertifiedRun]:
  """The runs of one row: each directory holds one run's results files.

  A directory that does not exist is a run not made (yet): it is left out,
  and `report` names it.
  """
  runs = []
  for directory in directories:
    if not os.path.isdir(directory):
      continue
    found = list(
        certified_runs.load_result_runs(
            certified_runs.expand_result_paths(directory)
        ).values()
    )
    if len(found) != 1:
      raise ValueError(f"{directory} holds {len(found)} runs; expected one.")
    runs.append(found[0])
  return runs


def _image_sets(groups: Mapping[str, Sequence[CertifiedRun]]):
  """The full image set (the largest) and the smaller subsets of it that
  some runs cover; a run on images outside the full set is an error."""
  sets = {}
  for runs in groups.values():
    for run in runs:
      idx = np.sort(run.results["idx"])
      sets[idx.tobytes()] = idx
  if not sets:
    return np.zeros((0,), np.int64), []
  full = max(sets.values(), key=lambda idx: idx.size)
  subsets = []
  for idx in sets.values():
    if not np.isin(idx, full).all():
      raise ValueError(
          f"A run covers {idx.size} images that are not a subset of the "
          f"{full.size} images of the others: rerun it on the same subset."
      )
    if idx.size < full.size:
      subsets.append(idx)
  return full, sorted(subsets, key=lambda idx: idx.size)


def restrict(run: CertifiedRun, images: np.ndarray) -> CertifiedRun:
  """The run's rows for the given image indices only."""
  keep = np.isin(run.results["idx"], images)
  return dataclasses.replace(
      run,
      results={k: np.asarray(v)[keep] for k, v in run.results.items()},
      seconds_per_image=float(np.mean(run.results["time"][keep])),
  )


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def table1(
    groups: Mapping[str, Sequence[CertifiedRun]],
    radii,
    missing: Mapping[str, str] | None = None,
) -> str:
  """Best certified accuracy over sigma per row, `best (clean @ sigma)`.

  A row without runs reads `missing[label]`, by default "not run".
  """
  rows = []
  for label, runs in groups.items():
    if not runs:
      rows.append(
          [label] + [(missing or {}).get(label, "not run")] * len(radii)
      )
      continue
    cells = []
    for best in tables.best_over_sigma(runs, radii):
      cells.append(
          _pct(0.0)
          if best.sigma is None
          else f"{_pct(best.accuracy)} ({_pct(best.clean_accuracy)} @ "
          f"σ={format_sigma(best.sigma)})"
      )
    sigmas = ", ".join(
        format_sigma(r.sigma) for r in sorted(runs, key=lambda r: r.sigma)
    )
    rows.append([f"{label} (σ = {sigmas})"] + cells)
  return tables.markdown_table(
      ["Base classifier (σ run)"] + [f"r = {r:g}" for r in radii], rows
  )


def per_run(
    groups: Mapping[str, Sequence[CertifiedRun]],
    radii,
    flops: Mapping[str, float],
) -> str:
  """Every run: clean and certified accuracy, forward FLOPs, s/image."""
  rows = []
  for label, runs in groups.items():
    for run in sorted(runs, key=lambda r: r.sigma):
      accuracy = run.certified_accuracy((0.0,) + tuple(radii))
      rows.append(
          [
              label,
              format_sigma(run.sigma),
              str(run.num_images),
              f"{run.method}"
              + (f" N={run.metadata['n']}" if "n" in run.metadata else ""),
              f"{flops.get(label, float('nan')) / 1e6:.1f} M",
              f"{run.seconds_per_image:.3f}",
          ]
          + [_pct(a) for a in accuracy]
      )
  return tables.markdown_table(
      [
          "Base classifier",
          "σ",
          "images",
          "certificate",
          "FLOPs / forward",
          "s / image (as run)",
          "clean",
      ]
      + [f"r = {r:g}" for r in radii],
      rows,
  )


def report(
    groups: Mapping[str, Sequence[CertifiedRun]],
    radii,
    flops: Mapping[str, float],
) -> str:
  """tables.md: Table 1 format on the full image set, the same on each
  smaller subset that some runs cover (every run restricted to it), then
  every run."""
  full, subsets = _image_sets(groups)
  on_full = {
      label: [r for r in runs if r.results["idx"].size == full.size]
      for label, runs in groups.items()
  }
  elsewhere = {
      label: "fewer images: below"
      for label, runs in groups.items()
      if runs and not on_full[label]
  }
  text = (
      f"# Denoised smoothing on Fashion-MNIST: {full.size} test images"
      "\n\nGenerated by experiments/denoised_tables.py from the "
      "per-image results under results/.\n\n"
      f"## Best certified accuracy over σ, {full.size} images (Table 1 "
      "format)\n\n" + table1(on_full, radii, elsewhere)
  )
  for images in subsets:
    on_subset = {}
    for label, runs in groups.items():
      runs = [
          restrict(r, images)
          for r in runs
          if np.isin(images, r.results["idx"]).all()
      ]
      on_subset[label] = runs
    text += (
        f"\n## {images.size} of those images (the runs made on fewer "
        "images), every run restricted to them\n\n" + table1(on_subset, radii)
    )
  estimated = {}
  for label, runs in on_full.items():
    scaled = [estimate.at_sample_size(r, WHAT_IF_N) for r in runs]
    if scaled and all(r is not None for r in scaled):
      estimated[f"{label}, N = {WHAT_IF_N:,} (estimate)"] = scaled
  if estimated:
    text += (
        f"\n## The randomized rows at N = {WHAT_IF_N:,}, estimated\n\n"
        "The same empirical frequencies at the paper's sample size "
        "(`estimate.at_sample_size`): an estimate of what N = 500 costs "
        "the uniform rows, not certificates.\n\n" + table1(estimated, radii)
    )
  return (
      text
      + "\n## Every run, on its own images\n\n"
      + per_run(groups, radii, flops)
  )
