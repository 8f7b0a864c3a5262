r"""Compiles the vote programs and the training step for a TPU and a GPU.

  JAX_PLATFORMS=cpu .venv-aot/bin/python \
      -m tests.programs.compile_for_accelerators small_cnn resnet50

aot_test.py runs it in a subprocess with the interpreter of .venv-aot (the
virtualenv with libtpu and the CUDA plugin that setup.sh builds). For the
model given (small_cnn: Fashion-MNIST, sigma 0.5; resnet50: ImageNet, sigma
3.5; both bfloat16) and each target of TARGETS, it compiles with
`dssn_jax.runs.aot`, at the library's default chunk size (the default
forward batch per chip): the DSSN vote program and, for the small CNN, the
randomized (uniform) vote program at N = 100,000 and the training step at
`TRAIN_BATCH_PER_CHIP` images per chip (`PROGRAMS`). One image per chip, the
batch split over the chips. Prints one JSON line: per model, target and
program, the chip's memory, the program's per-chip memory, the forward
batch per chip and the compile time. (One process for all the models given:
the compilers' start-up is paid once.)
"""

import json
import sys

from configs import fashion_mnist
from configs import imagenet
from dssn_jax.core import placement
from dssn_jax.runs import aot
from dssn_jax.runtime import accelerators

TARGETS = ("v5e-8", "8x H100")
SETTINGS = {
    "small_cnn": (fashion_mnist.get_config, "fashion_mnist", 0.5),
    "resnet50": (imagenet.get_config, "imagenet2012", 3.5),
}
# What each model compiles. ResNet-50's compiles take minutes each on a
# 2-core host, so the suite checks its DSSN vote program (the ImageNet
# certification users run); its other programs are rows of benchmarks.aot.
PROGRAMS = {
    "small_cnn": ("dssn", "uniform", "train_step"),
    "resnet50": ("dssn",),
}
# The training step's batch per chip. What the test checks (the step
# partitions over the mesh, every op has a lowering, it fits) does not
# depend on it, and the TPU compiler's time grows with it: 23 s at the
# config's 128 per chip against 5 s at 16 on this 2-core host, which keeps
# the small model's compiles in the fast tier.
TRAIN_BATCH_PER_CHIP = 16


def _record(compiled: aot.CompiledProgram, target, forward_batch=None):
  return {
      "hbm_bytes": target.device_hbm_bytes,
      "device_bytes": compiled.device_bytes,
      "temp_bytes": compiled.temp_bytes,
      "forward_batch": forward_batch,
      "compile_seconds": round(compiled.compile_seconds, 1),
  }


def compile_model(model_name: str) -> dict:
  """{"target/program": record} for one model of SETTINGS."""
  get_config, dataset, sigma = SETTINGS[model_name]
  report = {}
  for name in TARGETS:
    target = accelerators.TARGETS[name]
    mesh = placement.make_mesh(accelerators.compile_only_devices(target))
    model = aot.classifier_model(model_name, dataset, "bfloat16")
    batch = target.devices  # One image per chip.
    dssn, args = aot.dssn_program(model, sigma, batch, mesh)
    report[f"{name}/dssn"] = _record(
        aot.compile_vote_program(dssn, args), target, dssn.chunk_size
    )
    if PROGRAMS[model_name] == ("dssn",):
      continue
    sample, args = aot.sample_program(
        model, sigma, batch, mesh, num_samples=100_000
    )
    report[f"{name}/uniform"] = _record(
        aot.compile_vote_program(sample, args), target, sample.chunk_size
    )
    config = get_config()
    config.compute_dtype = "bfloat16"
    config.batch_size = TRAIN_BATCH_PER_CHIP * target.devices
    report[f"{name}/train_step"] = _record(
        aot.compile_train_step(config, mesh), target
    )
  return report


if __name__ == "__main__":
  print(json.dumps({name: compile_model(name) for name in sys.argv[1:]}))
