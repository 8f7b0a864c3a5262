"""Fashion-MNIST, small CNN: the dataset this machine has (Debian package).

Train, certify and analyze (about five minutes on 2 CPU cores):

  python -m experiments.train --config=configs/fashion_mnist.py \
      --workdir=runs/fmnist_dssn_0.5
  python -m experiments.certify --config=configs/fashion_mnist.py \
      --workdir=runs/fmnist_dssn_0.5
  python -m experiments.analyze --results=runs/fmnist_dssn_0.5 \
      --outdir=runs/fmnist_dssn_0.5/analysis

Variants: `configs/fashion_mnist.py:smoke` (seconds, for tests).
"""

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
  if arg == "smoke":
    common.smoke(config)
  elif arg:
    raise ValueError(f"Unknown variant {arg!r} of fashion_mnist; use 'smoke'.")
  return config
