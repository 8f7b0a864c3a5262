r"""Trains a denoiser under splitting noise (denoised smoothing).

  python -m experiments.train_denoiser --config=configs/fashion_mnist.py \
      --workdir=runs/fmnist_den_dssn_0.5 [--config.denoiser.objective=mse]

  python -m experiments.train_denoiser --config=configs/fashion_mnist.py \
      --workdir=runs/fmnist_den_stab_0.5 \
      --config.denoiser.objective=stability \
      --config.denoiser.classifier_workdir=runs/fmnist_clean

Rerunning the same command resumes from the last checkpoint in --workdir.
Certify the denoiser in front of a classifier with
`python -m experiments.certify --workdir=<classifier workdir>
--config.certify.denoiser_workdir=<this workdir>`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dssn_jax.training import denoiser
import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for the denoiser's checkpoints and metrics."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():
    denoiser.train_denoiser(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
