"""The jitted programs lower for GPU and TPU, checked on a CPU-only machine.

`jax.export` lowers for platforms ("cuda", "tpu") without an accelerator, so
a change that cannot compile there (an op without a GPU/TPU lowering, a
sharding that does not partition) fails here. Lowered, never run: WRN-40-2
and ResNet-50 in bfloat16, with the batch sharded over a 4-device mesh, for
the DSSN vote program, the randomized vote program and the training step,
each through the jit-wrapped library call a researcher would write. JAX fixes
the device count at start-up, so this runs in a subprocess with 4 fake CPU
devices.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    import dssn_jax
    from dssn_jax.core import certify, models, smoothing, train
    from dssn_jax.data import datasets
    from configs import cifar10, imagenet

    PLATFORMS = ("cuda", "tpu")
    mesh = certify.make_mesh()
    assert mesh.size == 4, mesh
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    key_data = jax.ShapeDtypeStruct((2,), jnp.uint32)  # Raw threefry key.
    report = {}

    def export(name, fn, in_shardings, *args):
      exported = jax.export.export(
          jax.jit(fn, in_shardings=in_shardings), platforms=PLATFORMS)(*args)
      out = exported.out_avals
      report[name] = {"platforms": list(exported.platforms),
                      "devices": exported.nr_devices,
                      "out": [[list(a.shape), str(a.dtype)] for a in out]}

    for config in (cifar10.get_config(), imagenet.get_config()):
      config.compute_dtype = "bfloat16"
      info = datasets.dataset_info(config.dataset)
      model = models.create_model(
          config.model, num_classes=info.num_classes, mean=info.mean,
          std=info.std, dtype=jnp.bfloat16)
      shape = tuple(info.input_shape)
      spec = smoothing.SmoothingSpec(config.sigma, config.q)
      offsets = smoothing.make_offsets(0, shape, spec.levels)
      batch = 8
      x = jax.ShapeDtypeStruct((batch,) + shape, jnp.float32)
      variables = jax.eval_shape(lambda: model.init(
          jax.random.key(0), jnp.zeros((1,) + shape), train=False))
      apply_fn = lambda variables, x: model.apply(variables, x, train=False)

      # What a researcher writes: the library call under their own jit.
      def dssn_votes(variables, x):
        return dssn_jax.dssn_counts(apply_fn, x, offsets, spec,
                                    params=variables, chunk_size=16,
                                    mesh=mesh)

      def randomized_votes(variables, x, key_data):
        return dssn_jax.sample_counts(
            apply_fn, x, spec, jax.random.wrap_key_data(key_data),
            noise="uniform", num_samples=64, params=variables,
            chunk_size=16, mesh=mesh)

      export(f"{config.model}/dssn_counts", dssn_votes,
             (replicated, batch_sharding), variables, x)
      export(f"{config.model}/sample_counts", randomized_votes,
             (replicated, batch_sharding, replicated), variables, x,
             key_data)

      def init_state():
        variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape),
                               train=False)
        return train.TrainState.create(
            apply_fn=model.apply, params=variables["params"],
            batch_stats=variables["batch_stats"],
            tx=train.create_optimizer(config, 1000))

      state = jax.eval_shape(init_state)
      step = train.make_train_step(model, config, spec, offsets)
      images = {"image": jax.ShapeDtypeStruct((batch,) + shape, jnp.uint8),
                "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
      export(f"{config.model}/train_step",
             lambda state, images, key_data: step(
                 state, images, jax.random.wrap_key_data(key_data)),
             (replicated, batch_sharding, replicated), state, images,
             key_data)
    print(json.dumps(report))
""")


@pytest.mark.slow
def test_vote_programs_and_train_step_lower_for_gpu_and_tpu():
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=(
          os.environ.get("XLA_FLAGS", "")
          + " --xla_force_host_platform_device_count=4"
      ),
  )
  result = subprocess.run(
      [sys.executable, "-c", SCRIPT],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-5000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  classes = {"wrn_40_2": 10, "resnet50": 1000}
  assert len(report) == 6, sorted(report)
  for name, exported in report.items():
    model, program = name.split("/")
    assert exported["platforms"] == ["cuda", "tpu"], name
    assert exported["devices"] == 4, name
    if program == "train_step":
      continue  # (state, metrics): checked by the lowering itself.
    assert exported["out"] == [[[8, classes[model]], "int32"]], name
