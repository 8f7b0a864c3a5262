r"""Early exit and sequential certification on the study's classifiers.

The tables of docs/early_exit.md, "The study's classifiers", from results
files that `python -m experiments.certify` wrote into the study's workdirs
(one per noise and sigma, `WORKDIR/{noise}_{sigma}`):

- `study_dssn.tsv` and `study_dssn_early.tsv`: full and early-exit DSSN on
  the study's 1,000 images (`configs/fashion_mnist.py:study`);
- `full_n_uniform.tsv` and `full_n_uniform_seq.tsv`: fixed N = 100,000 and
  sequential uniform at N_max = 100,000 on the 100 images of
  docs/fashion_mnist/full_n.md (`configs/fashion_mnist.py:full_n`);
- `study_uniform_seq.tsv`: sequential uniform at N_max = 100,000 on the
  study's 1,000 images.

  python -m benchmarks.early_exit_study --workdir=runs/box_study

Prints markdown: forward passes or draws and answers, not seconds (the
runs' `time` columns depend on what else the machine ran;
docs/early_exit.md times the methods apart). Certified accuracy is at the
requested radii of the runs (the early-exit and sequential rows answer
only there), over the images both runs of a row certified (a run still
going is compared on what it has done); "same answers"
compares every image's prediction and its answer at every requested radius
with the full run's. A file that is missing leaves its rows out.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import numpy as np

from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader

_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/box_study", "The study's workdirs' parent."
)
_SIGMAS = flags.DEFINE_list("sigmas", ["0.25", "0.5", "1", "2"], "sigmas")


def _read(workdir: str, name: str):
  """(columns, run metadata) of a results file, or None if it is missing."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  rows = results_reader.read_results(path)
  return rows, results_metadata.read_metadata(path)["run"]


def _answers(rows, radii) -> np.ndarray:
  """[images, radii] bool: certified (and correct) at each radius."""
  radius = np.nan_to_num(rows["radius"], nan=-1.0)
  correct = rows["correct"] & (rows["predict"] >= 0)
  return correct[:, None] & (radius[:, None] >= np.asarray(radii)[None])


def _common(a, b):
  """Both runs' rows restricted to the images both have, in idx order."""
  both = np.intersect1d(a["idx"], b["idx"])
  pick = lambda rows: {
      k: v[np.searchsorted(rows["idx"], both)] for k, v in rows.items()
  }
  return pick(a), pick(b)


def _pair(run: str, full_name: str, deciding_name: str):
  """(full rows, deciding rows, full run's metadata, requested radii) over
  the images both files have, or None if either file is missing."""
  full, deciding = _read(run, full_name), _read(run, deciding_name)
  if full is None or deciding is None:
    return None
  (full_rows, meta), (deciding_rows, deciding_meta) = full, deciding
  full_rows, deciding_rows = _common(full_rows, deciding_rows)
  return full_rows, deciding_rows, meta, _radii(deciding_meta)


def _percent(answers: np.ndarray) -> str:
  return ", ".join(f"{100 * a:.1f}" for a in answers.mean(0))


def _radii(meta) -> tuple[float, ...]:
  return tuple(float(r) for r in meta["radii"])


def dssn_rows(workdir: str, sigmas) -> list[str]:
  lines = [
      "| σ | L | images | splits used (mean) | fewer passes |"
      " same answers | certified acc. (%) |",
      "|---|---|---|---|---|---|---|",
  ]
  for sigma in sigmas:
    pair = _pair(
        os.path.join(workdir, f"dssn_{sigma}"),
        "study_dssn.tsv",
        "study_dssn_early.tsv",
    )
    if pair is None:
      continue
    full_rows, early_rows, meta, radii = pair
    same = np.array_equal(
        full_rows["predict"], early_rows["predict"]
    ) and np.array_equal(
        _answers(full_rows, radii), _answers(early_rows, radii)
    )
    levels = int(meta["levels"])
    used = float(np.mean(early_rows["samples"]))
    lines.append(
        f"| {sigma} | {levels} | {len(full_rows['idx'])} | {used:.0f} | "
        f"{levels / used:.2f}x | {'yes' if same else 'NO'} | "
        f"{_percent(_answers(early_rows, radii))} |"
    )
  return lines


def uniform_rows(workdir: str, sigmas) -> list[str]:
  lines = [
      "| σ | images | fixed N | sequential draws (mean) | fewer draws |"
      " certified acc. (%), fixed | sequential | largest gap (points) |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for sigma in sigmas:
    pair = _pair(
        os.path.join(workdir, f"uniform_{sigma}"),
        "full_n_uniform.tsv",
        "full_n_uniform_seq.tsv",
    )
    if pair is None:
      continue
    fixed_rows, seq_rows, meta, radii = pair
    fixed_acc = _answers(fixed_rows, radii).mean(0)
    seq_acc = _answers(seq_rows, radii).mean(0)
    draws = float(np.mean(seq_rows["samples"]))
    n = int(meta["n"])
    lines.append(
        f"| {sigma} | {len(seq_rows['idx'])} | {n:,} | {draws:,.0f} | "
        f"{n / draws:.1f}x | {_percent(_answers(fixed_rows, radii))} | "
        f"{_percent(_answers(seq_rows, radii))} | "
        f"{100 * np.max(np.abs(fixed_acc - seq_acc)):.0f} |"
    )
  return lines


def study_rows(workdir: str, sigmas) -> list[str]:
  lines = [
      "| σ | method | images | samples per image (mean) | certified acc. (%) |",
      "|---|---|---|---|---|",
  ]
  for sigma in sigmas:
    seq = _read(
        os.path.join(workdir, f"uniform_{sigma}"), "study_uniform_seq.tsv"
    )
    dssn = _read(os.path.join(workdir, f"dssn_{sigma}"), "study_dssn.tsv")
    if seq is None:
      continue
    seq_rows, seq_meta = seq
    radii = _radii(seq_meta)
    lines.append(
        f"| {sigma} | uniform, sequential, N_max = {int(seq_meta['n']):,} | "
        f"{len(seq_rows['idx'])} | {np.mean(seq_rows['samples']):,.0f} | "
        f"{_percent(_answers(seq_rows, radii))} |"
    )
    if dssn is not None:
      dssn_rows_, dssn_meta = dssn
      _, dssn_rows_ = _common(seq_rows, dssn_rows_)
      lines.append(
          f"| {sigma} | DSSN (exact) | {len(dssn_rows_['idx'])} | "
          f"{int(dssn_meta['levels'])} | "
          f"{_percent(_answers(dssn_rows_, radii))} |"
      )
  return lines


def best_rows(workdir: str, sigmas) -> list[str]:
  """Best certified accuracy over the sigmas with a study_uniform_seq run,
  per requested radius, for sequential uniform and for DSSN on the same
  images (the paper's Table 1 format: accuracy (@ sigma))."""
  best = {}  # method -> [(accuracy per radius, sigma)].
  radii = None
  for sigma in sigmas:
    seq = _read(
        os.path.join(workdir, f"uniform_{sigma}"), "study_uniform_seq.tsv"
    )
    dssn = _read(os.path.join(workdir, f"dssn_{sigma}"), "study_dssn.tsv")
    if seq is None or dssn is None:
      continue
    (seq_rows, seq_meta), (dssn_rows_, _) = seq, dssn
    radii = _radii(seq_meta)
    seq_rows, dssn_rows_ = _common(seq_rows, dssn_rows_)
    n = f"N_max = {int(seq_meta['n']):,}"
    for method, rows in (
        (f"uniform, sequential, {n}", seq_rows),
        ("DSSN (exact)", dssn_rows_),
    ):
      best.setdefault(method, []).append(
          (_answers(rows, radii).mean(0), sigma, len(rows["idx"]))
      )
  if radii is None:
    return []
  lines = [
      "| method | sigmas | images | "
      + " | ".join(f"r = {r:g}" for r in radii)
      + " |",
      "|---|---|---|" + "---|" * len(radii),
  ]
  for method, runs in best.items():
    cells = []
    for j in range(len(radii)):
      acc, sigma, _ = max(runs, key=lambda run, j=j: run[0][j])
      cells.append(f"{100 * acc[j]:.1f} (@ {sigma})")
    lines.append(
        f"| {method} | {', '.join(run[1] for run in runs)} | "
        f"{min(run[2] for run in runs)} | " + " | ".join(cells) + " |"
    )
  return lines


def main(argv):
  del argv
  sigmas = _SIGMAS.value
  print("## DSSN: early exit against the full enumeration\n")
  print("\n".join(dssn_rows(_WORKDIR.value, sigmas)))
  print("\n## Uniform: sequential at N_max against fixed N\n")
  print("\n".join(uniform_rows(_WORKDIR.value, sigmas)))
  print("\n## Uniform at N_max = 100,000 on the study's images\n")
  print("\n".join(study_rows(_WORKDIR.value, sigmas)))
  print("\n## Best over sigma, uniform at N_max = 100,000 and DSSN\n")
  print("\n".join(best_rows(_WORKDIR.value, sigmas)))


if __name__ == "__main__":
  app.run(main)
