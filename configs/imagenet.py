"""ImageNet, ResNet-50: the paper's ImageNet recipe (Figure 7).

SGD lr 0.1, batch 64, 30 epochs; sigma in {0.5, 2.0, 3.5}; certification of
every 100th validation image (500 in all). Needs TFDS `imagenet2012` built
from the ILSVRC tars in its manual dir. On accelerators use bfloat16.

  python -m experiments.train --config=configs/imagenet.py \
      --workdir=runs/in_dssn_0.5 --config.sigma=0.5 \
      --config.compute_dtype=bfloat16
  python -m experiments.certify --config=configs/imagenet.py \
      --workdir=runs/in_dssn_0.5

Variants: `configs/imagenet.py:smoke` (seconds on mock data, for tests).
"""

from configs import common


def get_config(arg: str | None = None):
  config = common.base_config()
  config.dataset = "imagenet2012"
  config.model = "resnet50"
  config.sigma = 0.5
  config.batch_size = 64
  config.num_epochs = 30
  config.eval_batch_size = 128
  config.eval_max_examples = 10_000
  config.certify.split = "validation"
  config.certify.skip = 100
  # -1: one image per local device (4 on a v4, v5p or v5e-256 host, 8 on
  # a v5e-8, v6e-8 or 8-GPU host); docs/accelerators.md, "Accelerator
  # defaults".
  config.certify.batch_size = -1
  if arg == "smoke":
    common.smoke(config)
    config.certify.skip = 1
    config.certify.max_examples = 2
    config.certify.batch_size = 2
    config.batch_size = 2
    config.eval_batch_size = 2
    config.eval_max_examples = 4
    config.steps_per_epoch = 1
    config.num_epochs = 1  # ResNet-50 at 224x224 is slow on a CPU.
    config.sigma = 0.01  # L = 8 noise samples.
  elif arg:
    raise ValueError(f"Unknown variant {arg!r} of imagenet; use 'smoke'.")
  return config
