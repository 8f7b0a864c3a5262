r"""Builds the archive of the authors' published certificates from their repo.

  git clone https://github.com/alevine0/smoothingSplittingNoise
  python -m experiments.build_reference \
      --authors_repo=smoothingSplittingNoise --outdir=reference_results
  python -m experiments.analyze --reference=reference_results \
      --dataset=cifar --outdir=out

Reads the per-run arrays in the clone's checkpoints/<run>/ and writes
levine_feizi_2021_certificates.npz and levine_feizi_2021_runs.json into
--outdir (see dssn_jax/reports/reference_archive.py). Their licence forbids
redistribution, so each user builds the archive from their own clone.
"""

from absl import app
from absl import flags

from dssn_jax.reports import reference_archive
import experiments

_AUTHORS_REPO = flags.DEFINE_string(
    "authors_repo",
    None,
    "Clone of github.com/alevine0/smoothingSplittingNoise (or its "
    "checkpoints/ directory).",
)
_OUTDIR = flags.DEFINE_string(
    "outdir", None, "Where the .npz archive and runs .json go."
)
flags.mark_flags_as_required(["authors_repo", "outdir"])


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():
    path = reference_archive.build_reference_archive(
        _AUTHORS_REPO.value, _OUTDIR.value
    )
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main)
