"""The whole certified-accuracy analysis (experiments/analyze.py).

`analyze` loads our results files (grouped into runs by their metadata,
`certified_runs`) and the authors' published certificates
(`reference_archive`), and writes per dataset the Markdown tables (`tables`:
the paper's Table 1, certified accuracy per run, seconds per image;
optionally our randomized runs at another N, `estimate`) into tables.md and
the PNG plots (`plots`) beside it. Our randomized runs appear once per
certificate their files record (`certified_runs.certificate_variants`): the
paper's (Yang et al. 2020), top-2 and box-constrained (Voracek & Hein 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
import math
import os
from pathlib import Path
import re

from dssn_jax.reports import certified_runs
from dssn_jax.reports import estimate
from dssn_jax.reports import plots
from dssn_jax.reports import reference_archive
from dssn_jax.reports import tables
from dssn_jax.reports.certified_runs import CertifiedRun

_TABLE1_NOTE = (
    "Cell: best certified accuracy (certified accuracy at r = 0 of that "
    "run @ its σ). An image is certified at r when predict == label and "
    "radius >= r; abstentions never count (the paper's clean accuracy of "
    "randomized runs counts the top class of abstentions too, so it is "
    "higher than r = 0 here).\n"
)
_CERTIFICATES_NOTE = (
    "Randomized runs are shown with three certificates of the same counts "
    "(docs/design.md, section 6): Yang et al. 2020 (the paper's, p_A lower "
    "bound alone), top-2 (p_A lower and p_B upper bounds, jointly at alpha) "
    "and box-constrained (Voracek & Hein 2023: top-2 bounds, adversarial "
    "images kept in [0, 1]^d; inf where no image of the box changes the "
    "prediction).\n"
)
_WHAT_IF_NOTE = (
    "Each randomized row's count of its selected class is recovered from "
    "its Clopper-Pearson bound and scaled to N; the radius is then "
    "recomputed. Abstentions stay abstentions.\n"
)


def _slug(*parts) -> str:
  """A file-name stem of the non-empty parts, e.g. 'certified_cifar_ours'."""
  return "_".join(re.sub(r"[^A-Za-z0-9._]+", "-", str(p)) for p in parts if p)


def _load_runs(results, reference, dataset) -> list[CertifiedRun]:
  """Our runs and the published ones, of one dataset if `dataset`."""
  runs: list[CertifiedRun] = []
  if reference:
    runs += reference_archive.load_reference_runs(reference).values()
  if isinstance(results, (str, os.PathLike)):
    results = [results]
  results = [s for s in results if os.fspath(s).strip()]
  if results:
    ours = certified_runs.load_result_runs(
        certified_runs.expand_result_paths(results)
    ).values()
    if not ours:  # Files without rows are skipped (with a warning).
      raise ValueError(
          f"No rows in the results files of {list(results)}: nothing to "
          "analyse. Certify first, or leave them out of --results."
      )
    for run in ours:
      runs += [run] + certified_runs.certificate_variants(run)
  if not results and not reference:
    raise ValueError(
        "Nothing to analyse: pass results files and/or the reference."
    )
  if dataset:
    wanted = certified_runs.normalize_dataset(dataset)
    available = sorted({r.dataset for r in runs})
    runs = [r for r in runs if r.dataset == wanted]
    if not runs:
      raise ValueError(
          f"No runs for dataset {dataset!r}; available: {available}."
      )
  return runs


def _plot_dataset(
    ds: str, runs: Sequence[CertifiedRun], outdir: Path, radii
) -> list[Path]:
  """One dataset's plots: every group's curves, the envelopes of the groups
  (with and without stability training), seconds per image if timed."""
  ds_name = certified_runs.DATASET_NAMES.get(ds, ds)
  groups = certified_runs.group_runs(runs)
  paths = []
  for key, members in groups.items():
    _, source, method, stabilized, certificate = key
    stem = _slug(
        "certified",
        ds,
        source,
        method,
        "stabilized" if stabilized else "",
        "" if certificate == "paper" else certificate,
    )
    paths.append(
        plots.plot_certified_accuracy(
            members,
            outdir / (stem + ".png"),
            f"{ds_name}: {tables.group_label(*key, with_source=True)}",
            radii,
        )
    )
  for stabilized in (False, True):
    subset = {k: v for k, v in groups.items() if k[3] == stabilized}
    if subset:
      suffix = " (stability training)" if stabilized else ""
      stem = _slug("envelopes", ds, "stabilized" if stabilized else "")
      paths.append(
          plots.plot_envelopes(
              subset,
              outdir / (stem + ".png"),
              f"{ds_name}: DSSN vs randomized baselines, best over σ{suffix}",
              radii,
          )
      )
  if any(r.seconds_per_image is not None for r in runs):
    paths.append(
        plots.plot_seconds_per_image(
            groups,
            outdir / (_slug("seconds_per_image", ds) + ".png"),
            f"{ds_name}: certification time per image",
        )
    )
  return paths


def _what_if_section(runs, radii, what_if_n: int | None) -> list[str]:
  """Our randomized runs at what_if_n samples (an estimate); [] if none."""
  if not what_if_n:
    return []
  scaled = [estimate.at_sample_size(run, what_if_n) for run in runs]
  scaled = [r for r in scaled if r is not None]
  if not scaled:
    return []
  return [
      f"### Randomized runs at N = {what_if_n:,}, same frequencies "
      "(an estimate, not certificates)\n",
      _WHAT_IF_NOTE,
      tables.table1_markdown(scaled, radii),
  ]


def _certificates_notes(runs: Sequence[CertifiedRun]) -> list[str]:
  """What the certificates of the randomized rows are, and which of our runs
  were written before the top-2 and box columns (shown with the paper's
  certificate only); [] without either."""
  notes = []
  if any(r.certificate != "paper" for r in runs):
    notes.append(_CERTIFICATES_NOTE)
  old = sorted(r.name for r in runs if certified_runs.lacks_variants(r))
  if old:
    notes.append(
        "Written before results files recorded the top-2 and box-constrained "
        "certificates (no count_runner_up, p_b_upper, radius_top2, "
        "radius_box columns), so shown with the paper's certificate only: "
        + ", ".join(old)
        + ".\n"
    )
  return notes


def _dataset_section(
    ds: str, runs: Sequence[CertifiedRun], outdir: Path, radii, what_if_n
) -> list[str]:
  """The Markdown of one dataset: its tables, then links to its plots."""
  plotted = _plot_dataset(ds, runs, outdir, radii)
  return (
      [
          f"## {certified_runs.DATASET_NAMES.get(ds, ds)}\n",
          "### Best certified accuracy over σ (Table 1 format)\n",
          _TABLE1_NOTE,
      ]
      + _certificates_notes(runs)
      + [
          tables.table1_markdown(runs, radii),
          "### Certified accuracy per run (%)\n",
          tables.certified_accuracy_markdown(runs, radii),
          "### Seconds per image\n",
          tables.seconds_per_image_markdown(runs),
      ]
      + _what_if_section(runs, radii, what_if_n)
      + [
          "### Plots\n",
          "\n".join(f"![{p.stem}]({p.name})" for p in plotted) + "\n",
      ]
  )


def analyze(
    results: str | Sequence[str] = (),
    reference: str | os.PathLike | None = None,
    outdir: str | os.PathLike = ".",
    dataset: str | None = None,
    radii=tables.DEFAULT_RADII,
    what_if_n: int | None = None,
) -> str:
  """Writes tables.md and PNG plots into `outdir`; returns the markdown.

  Args:
    results: our results files, directories (every *.tsv below) or globs,
      grouped into runs by their metadata.
    reference: the published certificates (.npz or its directory).
    outdir: where tables.md and the plots go (created if needed).
    dataset: keep only this dataset ('cifar', 'imagenet', ...; aliases like
      'cifar10' work).
    radii: l1 radii of the tables, [0, 1] pixel units.
    what_if_n: also tabulate our randomized runs as if their empirical
      frequencies had been observed with that many samples
      (`estimate.at_sample_size`; an estimate).

  Raises:
    ValueError: bad radii, nothing to analyse, or no run of `dataset`.
    FileNotFoundError: a results path that does not exist.
  """
  radii = tuple(float(r) for r in radii)
  if not radii or any(not math.isfinite(r) or r < 0 for r in radii):
    raise ValueError(f"radii must be finite and >= 0, got {radii}.")
  runs = _load_runs(results, reference, dataset)
  outdir = Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  sections = ["# Certified l1 robustness\n"]
  for ds in sorted({r.dataset for r in runs}):
    ds_runs = [r for r in runs if r.dataset == ds]
    sections += _dataset_section(ds, ds_runs, outdir, radii, what_if_n)
  markdown = "\n".join(sections)
  (outdir / "tables.md").write_text(markdown)
  return markdown
