r"""Re-verifies a results file against its checkpoint and dataset.

  python -m experiments.audit --results=runs/fmnist/certify_dssn.tsv \
      [--workdir=runs/fmnist] [--sample=100 --seed=0] [--data_dir=...]

Checks the file as every reader does (rows against the run metadata and the
file's digest), then recertifies the rows (all, or --sample of them drawn
with --seed) with the checkpoint and test images the file names and compares
every column but `time`: exactly, for DSSN (integer counts) and for the
randomized methods (their noise is redrawn with the run's seed), or, with
--fresh_noise_seed, each randomized row's count against fresh noise by a
two-sided Fisher exact test at --level. Prints what matched and every
mismatch; exits 1 on any failed check or mismatch.
"""

import sys

from absl import app
from absl import flags

from dssn_jax.runs import audit
import experiments

_RESULTS = flags.DEFINE_string(
    "results", None, "The results file (certify_<method>.tsv) to audit."
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "The training workdir of its classifier (default: the file's directory).",
)
_DENOISER_WORKDIR = flags.DEFINE_string(
    "denoiser_workdir", None, "The denoiser's workdir, for a denoised run."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_SAMPLE = flags.DEFINE_integer(
    "sample", -1, "Rows to recertify, drawn at random (-1: every row)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the --sample draw.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 16, "Images per certification call."
)
_FRESH_NOISE_SEED = flags.DEFINE_integer(
    "fresh_noise_seed",
    None,
    "Randomized methods: test each row's count against n fresh draws of "
    "this seed (two-sided Fisher exact test at --level) instead of "
    "redrawing the run's noise and comparing exactly.",
)
_LEVEL = flags.DEFINE_float(
    "level", 1e-3, "Level of the --fresh_noise_seed test, over all rows."
)
flags.mark_flags_as_required(["results"])


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():
    report = audit.audit(
        _RESULTS.value,
        workdir=_WORKDIR.value,
        denoiser_workdir=_DENOISER_WORKDIR.value,
        data_dir=_DATA_DIR.value,
        sample=_SAMPLE.value,
        seed=_SEED.value,
        batch_size=_BATCH_SIZE.value,
        fresh_noise_seed=_FRESH_NOISE_SEED.value,
        level=_LEVEL.value,
    )
  print(report.format())
  if not report.ok:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
