r"""Certified-accuracy tables and plots from per-image results files.

Our results files are grouped into runs by their metadata sidecars (method,
sigma, stabilized); the authors' published certificates can be added for
comparison. Writes tables.md and PNG plots into --outdir and prints the tables.

  python -m experiments.analyze \
      --results=workdir/certify_sigma0.5,workdir/certify_sigma1.0 \
      --reference=reference_results --dataset=cifar \
      --outdir=runs/analysis

--results takes files, directories (every *.tsv below them) and globs.
"""

import os

from absl import app
from absl import flags

from dssn_jax.reports import analyze
from dssn_jax.reports import tables

_RESULTS = flags.DEFINE_list(
    "results", [], "Results files, directories or globs (comma-separated)."
)
_REFERENCE = flags.DEFINE_string(
    "reference",
    None,
    "Published certificates of Levine & Feizi (2021): the .npz or its "
    "directory.",
)
_DATASET = flags.DEFINE_string(
    "dataset",
    None,
    "Keep only this dataset (cifar, imagenet, ...); default: all.",
)
_RADII = flags.DEFINE_list(
    "radii",
    [str(r) for r in tables.DEFAULT_RADII],
    "l1 radii of the tables (comma-separated).",
)
_OUTDIR = flags.DEFINE_string(
    "outdir", None, "Where tables.md and the plots go."
)
_WHAT_IF_N = flags.DEFINE_integer(
    "what_if_n",
    None,
    "Also tabulate our randomized runs at this many samples, at the same "
    "empirical frequencies (an estimate of what a small N costs).",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    radii = [float(r) for r in _RADII.value]
  except ValueError:
    raise app.UsageError(
        f"--radii must be numbers, got {_RADII.value}"
    ) from None
  if os.path.exists(_OUTDIR.value) and not os.path.isdir(_OUTDIR.value):
    raise SystemExit(
        f"analyze: error: --outdir={_OUTDIR.value} is a file, not a "
        "directory; name a directory (made if missing)."
    )
  try:
    markdown = analyze.analyze(
        results=_RESULTS.value,
        reference=_REFERENCE.value,
        outdir=_OUTDIR.value,
        dataset=_DATASET.value,
        radii=radii,
        what_if_n=_WHAT_IF_N.value,
    )
  except (ValueError, FileNotFoundError) as e:  # User errors: no traceback.
    raise SystemExit(f"analyze: error: {e}") from None
  except OSError as e:  # E.g. a read-only --outdir.
    raise SystemExit(
        f"analyze: error: cannot write {e.filename or _OUTDIR.value!r}: "
        f"{e.strerror or e}."
    ) from None
  print(markdown)


if __name__ == "__main__":
  flags.mark_flag_as_required("outdir")
  app.run(main)
