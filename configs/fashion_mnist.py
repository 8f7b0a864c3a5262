"""Fashion-MNIST, small CNN: the dataset this machine has (Debian package).

The quickstart (train, certify 300 test images, analyze; minutes on a CPU):

  python -m experiments.quickstart --workdir=runs/quickstart

The reproduction study of docs/fashion_mnist.md (DSSN vs uniform vs SSN):

  python -m experiments.study --config=configs/fashion_mnist.py:study \
      --workdir=runs/study --outdir=docs/fashion_mnist

Each stage alone:

  python -m experiments.train --config=configs/fashion_mnist.py \
      --workdir=runs/fmnist_dssn_0.5
  python -m experiments.certify --config=configs/fashion_mnist.py \
      --workdir=runs/fmnist_dssn_0.5
  python -m experiments.analyze --results=runs/fmnist_dssn_0.5 \
      --outdir=runs/fmnist_dssn_0.5/analysis

The denoised-smoothing study of docs/denoised.md (a clean classifier with
DnCNN denoisers in front): `bash experiments/denoised_study.sh`.

Variants: `:quickstart` (fewer epochs and images), `:study` (the grid of
docs/fashion_mnist.md), `:full_n` (a study classifier's randomized
certification at the paper's N = 100,000 on 100 of the study's images),
`:denoised` (the study's subset and N with the study's small DnCNN),
`:smoke` (seconds, for tests).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None):
  config = common.base_config()
  config.dataset = "fashion_mnist"
  config.model = "small_cnn"
  config.sigma = 0.5
  config.batch_size = 128
  config.num_epochs = 8
  config.learning_rate = 0.05
  config.weight_decay = 5e-4
  config.log_every_steps = 50
  config.certify.max_examples = 500
  config.certify.batch_size = 16
  config.certify.radii = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
  # The grid of `:study` (jobs.study_grid).
  config.study = ml_collections.ConfigDict()
  config.study.noises = ("dssn", "uniform", "ssn")
  config.study.sigmas = (0.25, 0.5, 1.0, 2.0)
  config.study.stability_noises = ("dssn", "uniform")
  config.study.stability_sigma = 0.5
  # Also tabulate the randomized runs at the paper's N, at the same empirical
  # frequencies (an estimate; estimate.at_sample_size). 0: no such table.
  config.study.what_if_n = 100_000
  if arg == "smoke":
    common.smoke(config)
    config.study.noises = ("dssn", "uniform")
    config.study.sigmas = (0.5,)
    config.study.stability_noises = ()
  elif arg == "quickstart":
    config.num_epochs = 2
    config.certify.max_examples = 300
  elif arg == "study":
    # Same model and training budget (2 epochs) for every run; the same
    # 1,000 test images (every 10th) for every method. N = 500 Monte Carlo
    # samples (+ n0 = 64 for selection) for the randomized methods is what
    # this 2-core CPU allowed in the study's session (9 randomized runs x
    # 1,000 images x (N + n0) forward passes next to 14 trainings); the
    # paper's N = 100,000 would take ~180x longer. docs/fashion_mnist.md
    # discusses what the smaller N costs the baselines.
    config.num_epochs = 2
    config.certify.skip = 10
    config.certify.max_examples = 1000
    config.certify.n = 500
  elif arg == "full_n":
    # docs/fashion_mnist.md, "The baselines at N = 100,000": the study's
    # classifiers (same training) certified by Monte Carlo at the paper's
    # N = 100,000 (n0 = 64, alpha = 0.001) on every 100th test image, a
    # 100-image subset of the study's 1,000; ~1 hour of a 2-core CPU per
    # sigma. Set --config.noise (uniform or ssn) and --config.sigma.
    config.num_epochs = 2
    config.certify.skip = 100
    config.certify.max_examples = 100
    config.certify.n = 100_000
  elif arg == "denoised":
    # docs/denoised.md: the `:study` subset (every 10th test image, 1,000
    # images) and N = 500 for the randomized methods. The DnCNN is 5 convs,
    # 16 wide (11 M FLOPs per 28x28 image, 0.8x the small CNN) instead of
    # Salman et al.'s 17 x 64 (0.87 G FLOPs, 63x the small CNN, ~60x the
    # certification time): what this 2-core CPU can certify on 1,000 images
    # at two sigmas and four denoisers in one session. One epoch of training
    # per denoiser, for the same reason.
    config.num_epochs = 1
    config.certify.skip = 10
    config.certify.max_examples = 1000
    config.certify.n = 500
    config.denoiser.depth = 5
    config.denoiser.width = 16
  elif arg:
    raise ValueError(
        f"Unknown variant {arg!r} of fashion_mnist; use "
        f"'quickstart', 'study', 'full_n', 'denoised' or 'smoke'."
    )
  return config
