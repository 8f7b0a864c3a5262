r"""Converts one of the authors' PyTorch checkpoints into a dssn-jax workdir.

  python -m experiments.convert_torch --checkpoint=cifar_0.25.pth \
      --arch=wrn_40_2 --sigma=0.25 --workdir=runs/authors_c10_0.25
  python -m experiments.certify --config=configs/cifar10.py \
      --workdir=runs/authors_c10_0.25 --config.sigma=0.25 \
      --config.offsets_layout=torch

Needs torch (`pip install 'dssn-jax[torch]'`; a CPU build is enough). The
checkpoint is validated completely before anything is written; see
dssn_jax/training/convert.py for the format and the key mapping.
"""

import sys

from absl import app
from absl import flags

from dssn_jax.training import convert
import experiments

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "The PyTorch checkpoint (.pth) of the authors' code."
)
_ARCH = flags.DEFINE_enum(
    "arch", None, convert.ARCHITECTURES, "The network in the checkpoint."
)
_SIGMA = flags.DEFINE_float(
    "sigma", None, "The sigma the model was trained with."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "New workdir for the converted checkpoint."
)
_OFFSETS_SEED = flags.DEFINE_integer(
    "offsets_seed", 0, "Seed of the offsets template (the authors used 0)."
)
_DATASET = flags.DEFINE_enum(
    "dataset",
    None,
    tuple(convert.DATASETS),
    "Default: cifar10 for the CIFAR networks, imagenet2012 for resnet50.",
)
_STABILITY = flags.DEFINE_bool(
    "stability", False, "The model was trained with stability training."
)
flags.mark_flags_as_required(["checkpoint", "arch", "sigma", "workdir"])


def main(argv):
  experiments.start(argv)
  with experiments.user_errors():
    experiments.check_directory_flag("workdir", _WORKDIR.value)
  try:
    metadata = convert.convert_checkpoint(
        _CHECKPOINT.value,
        _ARCH.value,
        _WORKDIR.value,
        sigma=_SIGMA.value,
        offsets_seed=_OFFSETS_SEED.value,
        dataset=_DATASET.value,
        stability=_STABILITY.value,
    )
  except (ValueError, FileNotFoundError, ImportError) as e:
    sys.exit(f"error: {e}")
  print(
      f"Converted {_CHECKPOINT.value} ({metadata['model']}, "
      f"{metadata['num_classes']} classes) into {_WORKDIR.value}: DSSN "
      f"sigma={metadata['sigma']}, L={metadata['levels']}, offsets "
      f"RandomState({metadata['offsets_seed']}) in the torch layout."
  )


if __name__ == "__main__":
  app.run(main)
