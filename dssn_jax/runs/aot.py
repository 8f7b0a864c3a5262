"""Ahead-of-time compilation of the certifier's and trainer's programs.

Every program is compiled from abstract inputs (`jax.ShapeDtypeStruct`s
with the shardings a run uses) over a mesh that may be made of compile-only
devices (`runtime.accelerators.compile_only_devices`: TPU slices and GPUs
this machine does not have), through the code path that runs it: the vote
programs of `core.dssn.dssn_program` and `core.randomized.sample_program`
(`VoteProgram.lower`), the denoised pair of `training.denoising.
composed_apply`, and the training step as `training.loop.jit_steps` jits
it. Nothing is computed or placed on a device.

`compile_lowered` returns the executable with XLA's analysis of it, per
device (chip): memory (arguments, outputs, temporaries) and, where the
backend gives them (TPU, CPU; not the GPU compiler), FLOPs, bytes accessed
and the compiler's own time estimate. XLA counts the body of a loop once,
so the cost of a vote program is that of one chunk of its scan
(`one_chunk`), times `chunks_per_device`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from dssn_jax import models
from dssn_jax.core import dssn
from dssn_jax.core import randomized
from dssn_jax.core import smoothing
from dssn_jax.core.votes import VoteProgram
from dssn_jax.data import datasets
from dssn_jax.training import classifier
from dssn_jax.training import denoising
from dssn_jax.training import loop


@dataclasses.dataclass(frozen=True)
class CompiledProgram:
  """A compiled program and XLA's analysis of it, per device (chip).

  Attributes:
    compiled: the executable (`jax.stages.Compiled`); on compile-only
      devices it can be inspected (`as_text()`), not run.
    compile_seconds: wall time of `Lowered.compile()` on this host.
    argument_bytes, output_bytes, temp_bytes, alias_bytes: per device,
      from `memory_analysis()` (alias: outputs that reuse a donated
      argument's buffer).
    flops: FLOPs of one execution per device as XLA counts them (a loop's
      body once); None where the backend gives no cost analysis (GPU).
    bytes_accessed: memory traffic per device, likewise.
    optimal_seconds: the compiler's own time estimate of one execution
      (TPU); None where it gives none or a non-positive value.
  """

  compiled: Any
  compile_seconds: float
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  flops: float | None
  bytes_accessed: float | None
  optimal_seconds: float | None

  @property
  def device_bytes(self) -> int:
    """Memory the program needs on each device: arguments, outputs and
    temporaries, outputs aliasing donated arguments counted once."""
    return (
        self.argument_bytes
        + self.output_bytes
        + self.temp_bytes
        - self.alias_bytes
    )


def compile_lowered(lowered: jax.stages.Lowered) -> CompiledProgram:
  """Compiles a lowered program; its executable and XLA's analysis."""
  start = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else None
  cost = cost or {}
  optimal = cost.get("optimal_seconds")
  return CompiledProgram(
      compiled=compiled,
      compile_seconds=seconds,
      argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes),
      flops=cost.get("flops"),
      bytes_accessed=cost.get("bytes accessed"),
      optimal_seconds=optimal if optimal and optimal > 0 else None,
  )


@dataclasses.dataclass(frozen=True)
class Model:
  """A classifier (or denoised pair) described abstractly for compiling.

  Attributes:
    apply_fn: apply_fn(variables, batch) -> logits, in eval mode.
    variables: its variables as `jax.ShapeDtypeStruct`s.
    input_shape: one input's shape (H, W, C).
    dtype: the compute dtype's name.
  """

  apply_fn: Any
  variables: Any
  input_shape: tuple[int, ...]
  dtype: str


def _abstract_variables(module, input_shape):
  return jax.eval_shape(
      lambda: module.init(
          jax.random.key(0), jnp.zeros((1,) + input_shape), train=False
      )
  )


def classifier_model(name: str, dataset: str, dtype: str = "bfloat16") -> Model:
  """A classifier of `models.create_model` for a dataset, abstract."""
  info = datasets.dataset_info(dataset)
  module = models.create_model(
      name,
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
      dtype=jnp.dtype(dtype),
  )
  shape = tuple(info.input_shape)
  return Model(
      lambda variables, x: module.apply(variables, x, train=False),
      _abstract_variables(module, shape),
      shape,
      dtype,
  )


def denoised_model(
    clf: Model, denoiser: str = "dncnn", depth: int = 17, width: int = 64
) -> Model:
  """The pair f o D (`denoising.composed_apply`) of a classifier and a
  denoiser (default: Salman et al.'s 17 x 64 DnCNN), abstract."""
  module = models.create_denoiser(
      denoiser,
      channels=clf.input_shape[-1],
      depth=depth,
      width=width,
      dtype=jnp.dtype(clf.dtype),
  )
  return Model(
      denoising.composed_apply(
          clf.apply_fn,
          lambda variables, x: module.apply(variables, x, train=False),
      ),
      {
          "clf": clf.variables,
          "den": _abstract_variables(module, clf.input_shape),
      },
      clf.input_shape,
      clf.dtype,
  )


def dssn_program(
    model: Model,
    sigma: float,
    batch: int,
    mesh,
    *,
    q: int = 255,
    chunk_size: int | None = None,
    num_items: int | None = None,
) -> tuple[VoteProgram, tuple[Any, ...]]:
  """The DSSN vote program `dssn_counts` runs on `batch` inputs over the
  mesh (`core.dssn.dssn_program`, default chunk size for the mesh's
  devices), with abstract arguments."""
  spec = smoothing.SmoothingSpec(sigma, q)
  return dssn.dssn_program(
      model.apply_fn,
      jax.ShapeDtypeStruct((batch,) + model.input_shape, jnp.float32),
      jax.ShapeDtypeStruct(model.input_shape, jnp.int32),
      spec,
      params=model.variables,
      chunk_size=chunk_size,
      mesh=mesh,
      num_items=num_items,
  )


def sample_program(
    model: Model,
    sigma: float,
    batch: int,
    mesh,
    *,
    num_samples: int,
    noise: str = "uniform",
    q: int = 255,
    chunk_size: int | None = None,
) -> tuple[VoteProgram, tuple[Any, ...]]:
  """The randomized vote program `sample_counts` runs (n draws per input),
  with abstract arguments (`core.randomized.sample_program`)."""
  return randomized.sample_program(
      model.apply_fn,
      jax.ShapeDtypeStruct((batch,) + model.input_shape, jnp.float32),
      smoothing.SmoothingSpec(sigma, q),
      jax.eval_shape(lambda: jax.random.key(0)),
      noise=noise,
      num_samples=num_samples,
      params=model.variables,
      chunk_size=chunk_size,
      mesh=mesh,
  )


def chunks_per_device(program: VoteProgram, batch: int) -> int:
  """Forward passes (scan iterations) each device runs for one call."""
  devices = 1 if program.mesh is None else program.mesh.size
  items = program.num_items
  if devices > 1 and batch < devices:  # The items are split over devices.
    items = math.ceil(items / devices)
  return math.ceil(items / min(program.chunk_size, items))


def one_chunk(program: VoteProgram, batch: int) -> VoteProgram:
  """The same program over the items of a single chunk per device: the
  scan's body once, whose cost XLA counts (see module doc)."""
  devices = 1 if program.mesh is None else program.mesh.size
  split = devices > 1 and batch < devices
  items = min(program.num_items, program.chunk_size * (devices if split else 1))
  return dataclasses.replace(
      program, num_items=items, chunk_size=min(program.chunk_size, items)
  )


def compile_vote_program(program: VoteProgram, args) -> CompiledProgram:
  """Compiles a vote program (`VoteProgram.lower`) for its mesh."""
  return compile_lowered(program.lower(*args))


def train_step(config, mesh) -> tuple[Any, tuple[Any, ...]]:
  """The classifier's training step of `config` as `loop.train` jits it on
  the mesh (`loop.jit_steps`), with abstract arguments (state, global
  batch of config.batch_size, key)."""
  trainer = classifier.trainer(config)
  step, _ = loop.jit_steps(trainer, mesh)
  state = jax.eval_shape(lambda: trainer.init_state(1000))
  info = datasets.dataset_info(config.dataset)
  batch = {
      "image": jax.ShapeDtypeStruct(
          (config.batch_size,) + tuple(info.input_shape), jnp.uint8
      ),
      "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
  }
  key = jax.eval_shape(lambda: jax.random.key(0))
  return step, (state, batch, key) + tuple(trainer.inputs)


def compile_train_step(config, mesh) -> CompiledProgram:
  """Compiles the training step of `config` for the mesh (`train_step`)."""
  step, args = train_step(config, mesh)
  return compile_lowered(step.lower(*args))
