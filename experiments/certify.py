r"""Certifies a trained classifier on its test split, resumably.

  python -m experiments.certify --config=configs/imagenet.py \
      --workdir=runs/in_dssn_0.5 [--config.certify.method=dssn]

Writes `certify_<method>.tsv` (one row per image, fsynced per batch) and its
`.summary.json` into --workdir; rerunning the same command resumes.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dssn_jax.runs import certify_workdir
from dssn_jax.runs import run_files
import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The training workdir holding checkpoints/."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():
    summary = certify_workdir.certify_workdir(_CONFIG.value, _WORKDIR.value)
  print(run_files.format_summary(summary))


if __name__ == "__main__":
  app.run(main)
