"""Randomized certificates at a small N beside the same run at a large N.

docs/fashion_mnist.md certifies the randomized baselines with N = 500
estimation samples and estimates what N = 100,000 would give from the same
empirical frequencies (`estimate.at_sample_size`). This report checks that
estimate image for image: one classifier certified twice on the same images,
at the small N and at the large one (same n0, alpha and seed, so the same
selected classes), beside the estimate from the small run. JAX-free, like
the rest of `dssn_jax.reports`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
import os

import numpy as np

from dssn_jax.core import methods
from dssn_jax.reports import estimate
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One classifier's certificates on the same images at two sample sizes.

  Arrays are (M,), one entry per image in increasing idx; radii are l1 in
  [0, 1] pixel units, negative where the certifier abstained.
  """

  sigma: float
  n_small: int
  n_large: int
  idx: np.ndarray
  label: np.ndarray
  predict: np.ndarray  # Selected class (-1: abstained) at the large N.
  p_lower_small: np.ndarray
  radius_small: np.ndarray
  radius_estimate: np.ndarray  # At n_large, from the small run's frequency.
  p_lower_large: np.ndarray
  radius_large: np.ndarray

  def certified(self, radius: np.ndarray, r: float) -> np.ndarray:
    """Images classified correctly with a certified radius >= r."""
    return (self.predict == self.label) & (radius >= r)


def compare(small_path: str | os.PathLike, large_path: str | os.PathLike):
  """The Comparison of two results files of one randomized run.

  Raises:
    ValueError: the files are not randomized runs of the same classifier,
      method, sigma, alpha, n0 and seed on the same images, or their
      selections disagree (then they are not the same classifier).
  """
  small = results_reader.read_results(small_path)
  large = results_reader.read_results(large_path)
  meta_small = results_metadata.read_metadata(small_path)
  meta_large = results_metadata.read_metadata(large_path)
  run_small, run_large = meta_small["run"], meta_large["run"]
  same = ("method", "sigma", "alpha", "n0", "seed", "checkpoint_step")
  differ = [k for k in same if run_small.get(k) != run_large.get(k)]
  if differ or methods.method(meta_small["method"]).exact:
    why = (
        f"they differ in {differ}"
        if differ
        else f"{meta_small['method']} certificates are exact"
    )
    raise ValueError(
        f"{small_path} and {large_path} are not the same randomized run at "
        f"two sample sizes ({why})."
    )
  if not np.array_equal(small["idx"], large["idx"]):
    raise ValueError(
        f"{small_path} and {large_path} hold other images; certify the same "
        f"subset at both sample sizes."
    )
  # Both runs select with the same n0 draws: other classes mean another
  # classifier.
  chosen_small = np.where(small["predict"] >= 0, small["predict"], -1)
  chosen_large = np.where(large["predict"] >= 0, large["predict"], -1)
  both = (chosen_small >= 0) & (chosen_large >= 0)
  if np.any(chosen_small[both] != chosen_large[both]):
    raise ValueError(
        f"{small_path} and {large_path} select other classes for the same "
        f"images: they certify different classifiers."
    )
  sigma, alpha = float(run_small["sigma"]), float(run_small["alpha"])
  n_small, n_large = int(run_small["n"]), int(run_large["n"])
  radius_estimate = estimate.radius_at_n(
      small["p_lower"], n_small, n_large, alpha, math.sqrt(3) * sigma
  )
  return Comparison(
      sigma=sigma,
      n_small=n_small,
      n_large=n_large,
      idx=large["idx"],
      label=large["label"],
      predict=np.maximum(chosen_small, chosen_large),
      p_lower_small=small["p_lower"],
      radius_small=small["radius"],
      radius_estimate=radius_estimate,
      p_lower_large=large["p_lower"],
      radius_large=large["radius"],
  )


def _cell(radius: float) -> str:
  return "abstain" if radius < 0 else f"{radius:.3f}"


@dataclasses.dataclass(frozen=True)
class ExactRun:
  """An exact (DSSN) run's certificates, for a row beside the comparisons."""

  sigma: float
  idx: np.ndarray
  certified_radius: np.ndarray  # Radius where correct, else -1.


def load_exact(path: str | os.PathLike) -> ExactRun:
  """A DSSN results file as an ExactRun (ValueError for other methods)."""
  meta = results_metadata.read_metadata(path)
  if not methods.method(meta["method"]).exact:
    raise ValueError(f"{path} is not an exact (dssn) run.")
  rows = results_reader.read_results(path)
  radius = np.where(rows["predict"] == rows["label"], rows["radius"], -1.0)
  return ExactRun(float(meta["run"]["sigma"]), rows["idx"], radius)


def _exact_on(exact: ExactRun, idx: np.ndarray) -> np.ndarray:
  """The exact run's certified radii on the images idx (all must be in it)."""
  where = {int(i): n for n, i in enumerate(exact.idx)}
  missing = [int(i) for i in idx if int(i) not in where]
  if missing:
    raise ValueError(
        f"The exact run at sigma {exact.sigma:g} lacks images {missing[:5]}; "
        f"it must cover the compared images."
    )
  return exact.certified_radius[[where[int(i)] for i in idx]]


def summary_markdown(
    comparisons: Sequence[Comparison],
    radii,
    exact: Sequence[ExactRun] = (),
) -> str:
  """Certified accuracy at each radius: small N, estimate, large N, and the
  exact run of the same sigma on the same images where one is given."""
  header = ["sigma", "certificate"] + [f"r = {r:g}" for r in radii]
  lines = [
      "| " + " | ".join(header) + " |",
      "|" + "---|" * len(header),
  ]
  for c in comparisons:
    for name, radius in (
        (f"N = {c.n_small:,}", c.radius_small),
        (
            f"N = {c.n_large:,}, estimated from N = {c.n_small:,}",
            (c.radius_estimate),
        ),
        (f"N = {c.n_large:,}, certified", c.radius_large),
    ):
      cells = [f"{100 * c.certified(radius, r).mean():.0f}" for r in radii]
      lines.append(f"| {c.sigma:g} | {name} | " + " | ".join(cells) + " |")
    for run in exact:
      if run.sigma == c.sigma:
        radius = _exact_on(run, c.idx)
        cells = [f"{100 * (radius >= r).mean():.0f}" for r in radii]
        lines.append(
            f"| {c.sigma:g} | DSSN (exact), same images | "
            + " | ".join(cells)
            + " |"
        )
  return "\n".join(lines)


def agreement(c: Comparison) -> dict[str, float]:
  """How far the estimate is from the certified radius at the large N, over
  the images that both certify (radii in [0, 1] pixel units)."""
  both = (c.radius_estimate >= 0) & (c.radius_large >= 0)
  gap = c.radius_estimate[both] - c.radius_large[both]
  return {
      "images": int(c.idx.size),
      "both_certify": int(both.sum()),
      "only_estimate_certifies": int(
          ((c.radius_estimate >= 0) & (c.radius_large < 0)).sum()
      ),
      "only_large_certifies": int(
          ((c.radius_estimate < 0) & (c.radius_large >= 0)).sum()
      ),
      "mean_abs_gap": float(np.abs(gap).mean()) if gap.size else 0.0,
      "max_abs_gap": float(np.abs(gap).max()) if gap.size else 0.0,
      "mean_gap": float(gap.mean()) if gap.size else 0.0,
      "mean_radius_large": (
          float(c.radius_large[both].mean()) if gap.size else 0.0
      ),
  }


def per_image_markdown(c: Comparison) -> str:
  """One row per image: label, selected class, p_lower and radius at the
  small N, the estimate, p_lower and radius at the large N."""
  lines = [
      f"| idx | label | class | p_lower, N = {c.n_small:,} | radius, N = "
      f"{c.n_small:,} | radius, N = {c.n_large:,} estimated | p_lower, N = "
      f"{c.n_large:,} | radius, N = {c.n_large:,} |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for i in range(c.idx.size):
    lines.append(
        f"| {c.idx[i]} | {c.label[i]} | {c.predict[i]} | "
        f"{c.p_lower_small[i]:.4f} | {_cell(c.radius_small[i])} | "
        f"{_cell(c.radius_estimate[i])} | {c.p_lower_large[i]:.5f} | "
        f"{_cell(c.radius_large[i])} |"
    )
  return "\n".join(lines)


def report_markdown(
    comparisons: Sequence[Comparison],
    radii,
    exact: Sequence[ExactRun] = (),
) -> str:
  """The whole report: certified accuracy (beside the exact runs given),
  agreement, per-image tables."""
  parts = [
      "# Randomized certificates at two sample sizes, image for image",
      "",
      "Generated by `python -m experiments.sample_size_table` (see "
      'docs/fashion_mnist.md, "The baselines at N = 100,000"). Radii are '
      "l1 in [0, 1] pixel units; certified accuracy in % of the images.",
      "",
      "## Certified accuracy",
      "",
      summary_markdown(comparisons, radii, exact),
      "",
      "## The estimate against the certificate",
      "",
      "Over the images both certify: the mean and largest |estimated - "
      "certified| radius, the mean signed gap (positive: the estimate is "
      "optimistic) and the mean certified radius at the large N.",
      "",
      "| sigma | images | both certify | only the estimate | only the "
      "large N | mean abs gap | max abs gap | mean gap | mean radius |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for c in comparisons:
    a = agreement(c)
    parts.append(
        f"| {c.sigma:g} | {a['images']} | {a['both_certify']} | "
        f"{a['only_estimate_certifies']} | {a['only_large_certifies']} | "
        f"{a['mean_abs_gap']:.4f} | {a['max_abs_gap']:.4f} | "
        f"{a['mean_gap']:+.4f} | {a['mean_radius_large']:.3f} |"
    )
  parts += ["", "## Per image", ""]
  for c in comparisons:
    parts += [f"### sigma = {c.sigma:g}", "", per_image_markdown(c), ""]
  return "\n".join(parts)
