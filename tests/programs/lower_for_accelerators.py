r"""Lowers the vote programs and the training step for GPU and TPU.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
      python -m tests.programs.lower_for_accelerators

export_test.py runs it in a subprocess (JAX fixes the device count at
start-up). `jax.export` lowers for platforms ("cuda", "tpu") that this
machine does not have; nothing runs. For WRN-40-2 (CIFAR-10) and ResNet-50
(ImageNet) in bfloat16, with the batch sharded over a 4-device mesh, it
exports the DSSN vote program, the randomized vote program and the training
step, each through the jit-wrapped library call a researcher would write,
and prints one JSON line: per program, its platforms, device count and
output shapes.
"""

import json

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import cifar10
from configs import imagenet
import dssn_jax
from dssn_jax import models
from dssn_jax.core import placement
from dssn_jax.core import smoothing
from dssn_jax.data import datasets
from dssn_jax.training import classifier
from dssn_jax.training import loop

PLATFORMS = ("cuda", "tpu")
BATCH = 8
# A raw threefry key: jax.export takes no typed key arguments.
KEY_DATA = jax.ShapeDtypeStruct((2,), jnp.uint32)


def _export(report, name, fn, in_shardings, *args) -> None:
  """Exports jit(fn) for PLATFORMS into report[name]."""
  exported = jax.export.export(
      jax.jit(fn, in_shardings=in_shardings), platforms=PLATFORMS
  )(*args)
  report[name] = {
      "platforms": list(exported.platforms),
      "devices": exported.nr_devices,
      "out": [[list(a.shape), str(a.dtype)] for a in exported.out_avals],
  }


def _export_model(report, config, mesh) -> None:
  """The two vote programs and the training step of one config's model."""
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  config.compute_dtype = "bfloat16"
  info = datasets.dataset_info(config.dataset)
  model = models.create_model(
      config.model,
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
      dtype=jnp.bfloat16,
  )
  shape = tuple(info.input_shape)
  spec = smoothing.SmoothingSpec(config.sigma, config.q)
  offsets = smoothing.make_offsets(0, shape, spec.levels)
  x = jax.ShapeDtypeStruct((BATCH,) + shape, jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init(
          jax.random.key(0), jnp.zeros((1,) + shape), train=False
      )
  )
  apply_fn = lambda variables, x: model.apply(variables, x, train=False)

  # What a researcher writes: the library call under their own jit.
  def dssn_votes(variables, x):
    return dssn_jax.dssn_counts(
        apply_fn,
        x,
        offsets,
        spec,
        params=variables,
        chunk_size=16,
        mesh=mesh,
    )

  def randomized_votes(variables, x, key_data):
    return dssn_jax.sample_counts(
        apply_fn,
        x,
        spec,
        jax.random.wrap_key_data(key_data),
        noise="uniform",
        num_samples=64,
        params=variables,
        chunk_size=16,
        mesh=mesh,
    )

  _export(
      report,
      f"{config.model}/dssn_counts",
      dssn_votes,
      (replicated, batch_sharding),
      variables,
      x,
  )
  _export(
      report,
      f"{config.model}/sample_counts",
      randomized_votes,
      (replicated, batch_sharding, replicated),
      variables,
      x,
      KEY_DATA,
  )
  _export_train_step(report, config, model, spec, offsets, mesh)


def _export_train_step(report, config, model, spec, offsets, mesh) -> None:
  """The classifier's training step, on an abstract state and batch."""
  shape = tuple(offsets.shape)
  state = jax.eval_shape(
      lambda: loop.new_state(
          model, config, shape, classifier.create_optimizer(config, 1000)
      )
  )
  step = classifier.make_train_step(model, config, spec, offsets)
  images = {
      "image": jax.ShapeDtypeStruct((BATCH,) + shape, jnp.uint8),
      "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32),
  }
  _export(
      report,
      f"{config.model}/train_step",
      lambda state, images, key_data: step(
          state, images, jax.random.wrap_key_data(key_data)
      ),
      (
          NamedSharding(mesh, P()),
          NamedSharding(mesh, P("data")),
          NamedSharding(mesh, P()),
      ),
      state,
      images,
      KEY_DATA,
  )


def main() -> None:
  mesh = placement.make_mesh()
  assert mesh.size == 4, mesh
  report = {}
  for config in (cifar10.get_config(), imagenet.get_config()):
    _export_model(report, config, mesh)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
