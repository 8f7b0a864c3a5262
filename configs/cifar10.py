"""CIFAR-10, WRN-40-2: the paper's reference recipe (Table 1).

SGD lr 0.1, Nesterov momentum 0.9, weight decay 1e-4, batch 64, 120 epochs,
cosine schedule, random crop (pad 4) and flip; sigma in
{0.15, 0.25, 0.5, ..., 3.5} (common.CIFAR10_SIGMAS). Needs TFDS `cifar10`.

  python -m experiments.train --config=configs/cifar10.py \
      --workdir=runs/c10_dssn_0.5 --config.sigma=0.5
  python -m experiments.certify --config=configs/cifar10.py \
      --workdir=runs/c10_dssn_0.5
  # Stability training (gamma = 6):
  python -m experiments.train --config=configs/cifar10.py \
      --workdir=runs/c10_dssn_0.5_stab --config.sigma=0.5 \
      --config.stability=True

Variants: `configs/cifar10.py:smoke` (seconds, for tests),
`configs/cifar10.py:resnet110` (Cohen et al.'s model).
"""

from configs import common


def get_config(arg: str | None = None):
  config = common.base_config()
  config.dataset = "cifar10"
  config.model = "wrn_40_2"
  config.sigma = 0.5
  config.batch_size = 64
  config.num_epochs = 120
  config.certify.batch_size = 32  # All 10,000 test images, as the paper.
  if arg == "smoke":
    common.smoke(config)
    config.sigma = 0.05  # L = 44 noise samples: seconds on a CPU.
  elif arg == "resnet110":
    config.model = "resnet110"
  elif arg:
    raise ValueError(
        f"Unknown variant {arg!r} of cifar10; use 'smoke' or 'resnet110'."
    )
  return config
