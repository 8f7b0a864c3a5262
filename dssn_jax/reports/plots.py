"""PNG plots of certified accuracy and certification time (matplotlib).

Each plot draws on its own Agg-backed `Figure` (no pyplot global state), and
matplotlib is imported only when a plot is drawn, so that importing the
reports costs nothing. Radii are l1 in [0, 1] pixel units; method colours
come from `core.methods`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
from pathlib import Path

import numpy as np

from dssn_jax.core import methods
from dssn_jax.reports.certified_runs import CertifiedRun
from dssn_jax.reports.certified_runs import format_sigma
from dssn_jax.reports.certified_runs import GroupKey
from dssn_jax.reports.tables import DEFAULT_RADII
from dssn_jax.reports.tables import group_label


def _figure(figsize=(7.0, 4.8)):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=figsize, layout="constrained")
  return fig, fig.subplots()


def _save(fig, path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  return path


def _radius_grid(runs: Sequence[CertifiedRun], radii) -> np.ndarray:
  """600 radii from 0 to just past the largest certified one (or radii)."""
  rmax = max(float(np.max(radii, initial=0.0)), 0.0)
  for run in runs:
    certified = run.results["radius"][run.results["correct"]]
    certified = certified[np.isfinite(certified)]  # A box radius may be inf.
    if certified.size:
      rmax = max(rmax, float(certified.max()))
  return np.linspace(0.0, max(rmax * 1.03, 0.1), 600)


def _envelope(runs: Sequence[CertifiedRun], grid: np.ndarray) -> np.ndarray:
  """Best certified accuracy over the runs at each radius of grid (NaN
  where no run was asked that radius)."""
  table = np.array([np.atleast_1d(r.certified_accuracy(grid)) for r in runs])
  best = np.max(np.nan_to_num(table, nan=-1.0), axis=0)
  return np.where(best < 0, np.nan, best)


def _requested_grid(runs: Sequence[CertifiedRun]) -> np.ndarray | None:
  """The requested radii of deciding runs (all of them), else None: such
  runs are drawn as points at those radii, never as curves between them."""
  asked = [r.requested_radii for r in runs]
  if not asked or any(a is None for a in asked):
    return None
  return np.unique(np.concatenate([np.asarray(a) for a in asked]))


def _accuracy_axes(ax, grid: np.ndarray, ylabel: str, title: str) -> None:
  ax.set_xlabel(r"$\ell_1$ radius $r$")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.set_xlim(0, grid[-1])
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)


def plot_certified_accuracy(
    runs: Sequence[CertifiedRun],
    path: str | os.PathLike,
    title: str,
    radii=DEFAULT_RADII,
) -> Path:
  """Certified accuracy vs radius: one curve per sigma and the best-over-sigma
  envelope."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  runs = sorted(runs, key=lambda r: r.sigma)
  grid = _radius_grid(runs, radii)
  points = _requested_grid(runs)
  at = grid if points is None else points
  curve, envelope = dict(lw=1.2), dict(lw=2.2, ls="--")
  if points is not None:  # Points at the requested radii, no lines.
    curve, envelope = dict(ls="none", marker="o"), dict(ls="none", marker="x")
  fig, ax = _figure()
  cmap = matplotlib.colormaps["viridis"]
  for i, run in enumerate(runs):
    color = cmap(0.9 * i / max(len(runs) - 1, 1))  # Skip the palest yellow.
    ax.plot(
        at,
        100 * run.certified_accuracy(at),
        color=color,
        label=f"σ = {format_sigma(run.sigma)}",
        **curve,
    )
  ax.plot(
      at,
      100 * _envelope(runs, at),
      color="black",
      label="best over σ",
      **envelope,
  )
  _accuracy_axes(ax, grid, "certified accuracy (%)", title)
  ax.legend(fontsize=7, ncol=2 if len(runs) > 8 else 1, loc="upper right")
  return _save(fig, path)


def plot_envelopes(
    groups: Mapping[GroupKey, Sequence[CertifiedRun]],
    path: str | os.PathLike,
    title: str,
    radii=DEFAULT_RADII,
) -> Path:
  """Best-over-sigma certified accuracy of each method (DSSN vs baselines) on
  one plot; the published runs dashed when ours are there too."""
  all_runs = [r for v in groups.values() for r in v]
  grid = _radius_grid(all_runs, radii)
  with_source = len({key[1] for key in groups}) > 1
  fig, ax = _figure()
  for key, members in groups.items():
    _, source, method, _, certificate = key
    method = methods.method(method)
    points = _requested_grid(members)
    if points is not None:  # A deciding method: points, no curve.
      ax.plot(
          points,
          100 * _envelope(members, points),
          ls="none",
          marker="o",
          color=method.color,
          label=group_label(*key, with_source=with_source),
      )
      continue
    ax.plot(
        grid,
        100 * _envelope(members, grid),
        lw=2,
        color=method.color,
        ls="--"
        if source == "reference" and with_source
        else method.certificate(certificate).linestyle,
        label=group_label(*key, with_source=with_source),
    )
  _accuracy_axes(ax, grid, "certified accuracy, best over σ (%)", title)
  ax.legend(fontsize=8, loc="upper right")
  return _save(fig, path)


def plot_seconds_per_image(
    groups: Mapping[GroupKey, Sequence[CertifiedRun]],
    path: str | os.PathLike,
    title: str,
) -> Path:
  """Certification seconds per image vs sigma, one line per method (log
  scale)."""
  with_source = len({key[1] for key in groups}) > 1
  fig, ax = _figure()
  for key, members in groups.items():
    _, _, method, stabilized, certificate = key
    if certificate != "paper":  # Same run, same time: drawn once.
      continue
    timed = [r for r in members if r.seconds_per_image is not None]
    if not timed:
      continue
    ax.plot(
        [r.sigma for r in timed],
        [r.seconds_per_image for r in timed],
        marker="o" if not stabilized else "s",
        ms=4,
        color=methods.method(method).color,
        ls=":" if stabilized else "-",
        label=group_label(*key, with_source=with_source),
    )
  ax.set_yscale("log")
  ax.set_xlabel("σ")
  ax.set_ylabel("seconds per image (log scale)")
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  return _save(fig, path)
