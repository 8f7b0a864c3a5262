"""Markdown tables of certified accuracy.

The paper's Table 1 (at each l1 radius, the best certified accuracy over
the sigmas of one method), certified accuracy per run, and certification
seconds per image against sigma. An image is certified at radius r when
predict == label and radius >= r, so an abstention never counts
(`dssn_jax.runs.results_reader.certified_accuracy`).

Pure NumPy: nothing here imports JAX, TensorFlow or matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import dataclasses

import numpy as np

from dssn_jax.core import methods
from dssn_jax.reports import certified_runs
from dssn_jax.reports.certified_runs import CertifiedRun
from dssn_jax.reports.certified_runs import format_sigma

# l1 radii of the tables, [0, 1] pixel units (the paper's Table 1).
DEFAULT_RADII = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


@dataclasses.dataclass(frozen=True)
class BestOverSigma:
  """Best certified accuracy at one radius over the sigmas of one method."""

  radius: float
  accuracy: float
  sigma: float | None  # None when no run certifies anything at this radius.
  clean_accuracy: float | None  # Certified accuracy at r = 0 of that run.
  run: str | None


def best_over_sigma(
    runs: Sequence[CertifiedRun], radii=DEFAULT_RADII
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
    # First maximum: smallest sigma; NaN (a radius a deciding run was not
    # asked) never wins.
    i = int(np.argmax(np.nan_to_num(table[:, j], nan=-1.0)))
    if not table[i, j] > 0:
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


def group_label(
    dataset, source, method, stabilized, certificate="paper", with_source=True
) -> str:
  """A group's row label or legend entry, e.g. 'DSSN +stability training
  [ours]' or 'Uniform additive noise, top-2 [ours]' (the group key of
  `certified_runs.group_runs`)."""
  del dataset  # Every table and plot holds one dataset.
  label = methods.method(method).certificate(certificate).label
  if stabilized:
    label += " +stability training"
  if with_source:
    label += " [published]" if source == "reference" else " [ours]"
  return label


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A Markdown table: the header row, the rule, one line per row."""
  lines = [
      "| " + " | ".join(header) + " |",
      "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
  if np.isnan(x):
    return "n/a"  # Not asked of a deciding run (design.md, section 7).
  return f"{100 * x:.2f}%"


def _r(r: float) -> str:
  return f"{r:g}"


def _sigma_span(runs: Sequence[CertifiedRun]) -> str:
  """'σ = 0.5', or '15 σ in [0.15, 3.5]'."""
  sigmas = sorted(r.sigma for r in runs)
  if len(sigmas) == 1:
    return f"σ = {format_sigma(sigmas[0])}"
  return (
      f"{len(sigmas)} σ in [{format_sigma(sigmas[0])}, "
      f"{format_sigma(sigmas[-1])}]"
  )


def table1_markdown(runs: Iterable[CertifiedRun], radii=DEFAULT_RADII) -> str:
  """The paper's Table 1: per method, best certified accuracy over sigma at
  each radius.

  Cell: `best% (clean% @ sigma=s)`, clean = certified accuracy at r = 0 of the
  run achieving the best.
  """
  groups = certified_runs.group_runs(runs)
  with_source = len({key[1] for key in groups}) > 1
  rows = []
  for key, members in groups.items():
    cells = [
        _pct(0.0)
        if best.sigma is None
        else (
            f"{_pct(best.accuracy)} ({_pct(best.clean_accuracy)} "
            f"@ σ={format_sigma(best.sigma)})"
        )
        for best in best_over_sigma(members, radii)
    ]
    label = group_label(*key, with_source=with_source)
    rows.append([f"{label} ({_sigma_span(members)})"] + cells)
  return markdown_table(["Method"] + [f"r = {_r(r)}" for r in radii], rows)


def certified_accuracy_markdown(
    runs: Iterable[CertifiedRun], radii=DEFAULT_RADII
) -> str:
  """Certified accuracy at each radius for every run (r = 0 is the clean
  accuracy)."""
  radii = tuple(radii) if 0.0 in tuple(radii) else (0.0,) + tuple(radii)
  rows = []
  for (_, source, _, stabilized, _), members in certified_runs.group_runs(
      runs
  ).items():
    for run in members:
      acc = np.atleast_1d(run.certified_accuracy(radii))
      rows.append(
          [
              run.name,
              "published" if source == "reference" else "ours",
              run.label,
              "yes" if stabilized else "no",
              format_sigma(run.sigma),
              str(run.num_images),
          ]
          + ["n/a" if np.isnan(a) else f"{100 * a:.2f}" for a in acc]
      )
  return markdown_table(
      ["run", "source", "method", "stability", "σ", "images"]
      + [f"r = {_r(r)} (%)" for r in radii],
      rows,
  )


def seconds_per_image_markdown(runs: Iterable[CertifiedRun]) -> str:
  """Mean certification seconds per image against sigma, one column per
  method (the top-2 and box certificates cost nothing more: not shown)."""
  groups = {
      k: v
      for k, v in certified_runs.group_runs(runs).items()
      if any(r.seconds_per_image is not None for r in v) and k[4] == "paper"
  }
  if not groups:
    return "No timing data.\n"
  with_source = len({key[1] for key in groups}) > 1
  sigmas = sorted({r.sigma for v in groups.values() for r in v})
  header = ["σ"] + [group_label(*k, with_source=with_source) for k in groups]
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
  return markdown_table(header, rows)
