"""How many noisy inputs one forward pass may take: memory sizing.

The certifiers evaluate the base classifier on `chunk_size` noise samples of
every input of a batch per forward pass. Without an explicit chunk size, a
forward pass sees up to `DEFAULT_FORWARD_BATCH` noisy inputs per device, fewer
when the model's activations would not fit `MEMORY_FRACTION` of the device's
free memory (`auto_chunk_size`): the memory of one forward pass is bounded
from its jaxpr (every intermediate value kept, no buffer reuse) and, when
that bound is too coarse, taken from XLA's memory analysis of the compiled
forward pass. Counts never depend on the chunk size; only speed and memory
do.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Noisy inputs per forward pass (per device) when no chunk size is given, at
# most: fewer when they would not fit MEMORY_FRACTION of the free memory.
# Accelerators want large batches; on CPUs a forward pass whose activations
# stay near the caches is faster: there the batch is CPU_ACTIVATION_BYTES
# over the model's activation bytes per input (the jaxpr bound of
# `classifier_facts`), within [CPU_MIN_FORWARD_BATCH, DEFAULT_FORWARD_BATCH].
# benchmarks/cpu_defaults.py (2-core AVX-512 EPYC, idle): the small CNN (1.2
# MiB per input) is within 4% of its best at 512 and 0.33x at 64; WRN-40-2
# (20 MiB) within 8% from 50 to 256, 0.8x at 16-32; ResNet-50 (304 MiB)
# within 2% from 4 to 16, 0.8x at 32. The rule gives 512, 50 and 8.
DEFAULT_FORWARD_BATCH = 512
CPU_ACTIVATION_BYTES = 2**30
CPU_MIN_FORWARD_BATCH = 8
MEMORY_FRACTION = 0.5
# Inputs in the one trace of a classifier that sizes its forward passes.
FACTS_BATCH = 2


def bind(apply_fn, params):
  """The forward function batch -> logits (params may be None)."""
  if params is None:
    return apply_fn
  return lambda batch: apply_fn(params, batch)


def abstract_signature(tree):
  """Shapes and dtypes of a pytree of arrays (hashable with its treedef)."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(
      jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in leaves
  )


@dataclasses.dataclass(frozen=True)
class ForwardFacts:
  """What the certifier needs to know of a classifier, from one trace."""

  # The abstract output of a forward pass of FACTS_BATCH inputs (logits
  # (FACTS_BATCH, C) for a classifier; the certifier checks that).
  logits: Any
  # Bytes of all intermediate values of a forward pass of one input, summed
  # (no buffer reuse): an upper bound on its live memory, up to the scratch
  # space of library calls.
  intermediate_bytes: int
  # The largest single intermediate value of one input, in bytes.
  largest_bytes: int


def _jaxpr_bytes(jaxpr) -> tuple[int, int]:
  """(sum, max) of the byte sizes of every value a jaxpr computes."""
  total = largest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      aval = var.aval
      if hasattr(aval, "shape") and hasattr(aval, "dtype"):
        size = math.prod(aval.shape) * np.dtype(aval.dtype).itemsize
        total += size
        largest = max(largest, size)
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else (param,)):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr.
        if hasattr(sub, "eqns"):
          sub_total, sub_largest = _jaxpr_bytes(sub)
          total += sub_total
          largest = max(largest, sub_largest)
  return total, largest


@functools.lru_cache(maxsize=256)
def _forward_facts(apply_fn, params_signature, input_shape) -> ForwardFacts:
  """Traces apply_fn once per (function, params shapes, input shape).

  With a batch of FACTS_BATCH inputs, not 1: a classifier that returns one
  row whatever its batch would pass a check at 1 and fail later.
  """
  treedef, leaves = params_signature
  params = None if treedef is None else jax.tree.unflatten(treedef, leaves)
  closed, out = jax.make_jaxpr(
      lambda params, batch: bind(apply_fn, params)(batch), return_shape=True
  )(params, jax.ShapeDtypeStruct((FACTS_BATCH,) + input_shape, jnp.float32))
  total, largest = _jaxpr_bytes(closed.jaxpr)
  return ForwardFacts(out, total // FACTS_BATCH, largest // FACTS_BATCH)


def classifier_facts(apply_fn, params, input_shape) -> ForwardFacts:
  """`ForwardFacts` of apply_fn, cached by identity and shapes."""
  signature = (None, ()) if params is None else abstract_signature(params)
  try:
    return _forward_facts(apply_fn, signature, tuple(input_shape))
  except TypeError:  # An unhashable apply_fn: no cache.
    return _forward_facts.__wrapped__(apply_fn, signature, tuple(input_shape))


def default_chunk_size(
    batch_per_device: int,
    num_items: int,
    forward_batch: int = DEFAULT_FORWARD_BATCH,
) -> int:
  """Noise samples per chunk so one forward pass sees ~forward_batch inputs.

  The number of chunks is fixed first and the chunk size then evened out, so
  the last chunk is not a tiny remainder.
  """
  chunk = max(1, min(num_items, forward_batch // max(1, batch_per_device)))
  num_chunks = math.ceil(num_items / chunk)
  return math.ceil(num_items / num_chunks)


def default_forward_batch(
    device=None, bytes_per_input: float | None = None
) -> int:
  """Most noisy inputs per forward pass on `device` (default: the first
  local device): DEFAULT_FORWARD_BATCH on accelerators; on CPUs sized so
  that bytes_per_input (activations of one input) fit CPU_ACTIVATION_BYTES.
  """
  device = jax.local_devices()[0] if device is None else device
  if device.platform != "cpu" or not bytes_per_input:
    return DEFAULT_FORWARD_BATCH
  return int(
      min(
          DEFAULT_FORWARD_BATCH,
          max(CPU_MIN_FORWARD_BATCH, CPU_ACTIVATION_BYTES // bytes_per_input),
      )
  )


def _host_available_bytes() -> int | None:
  """Memory the host can still give this process (Linux MemAvailable)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def device_memory_budget(device=None) -> int | None:
  """Bytes a forward pass may use on one device (None: unknown).

  `MEMORY_FRACTION` of the device's free memory when it is first asked
  (cached per device, so that the chunk size, and with it the compiled
  program, stays the same for the whole process). CPU devices share the
  host's memory. Default: the first local device.
  """
  return _device_memory_budget(
      jax.local_devices()[0] if device is None else device
  )


@functools.cache
def _device_memory_budget(device) -> int | None:
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "bytes_limit" in stats:
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  elif device.platform == "cpu":
    free = _host_available_bytes()
    if free is None:
      return None
    free //= max(1, len(jax.local_devices(backend="cpu")))
  else:
    return None
  return int(free * MEMORY_FRACTION)


@functools.lru_cache(maxsize=64)
def _compiled_bytes_per_input(
    apply_fn, params_signature, input_shape, batch: int
) -> float | None:
  """Bytes per input of one compiled forward pass of `batch` inputs, from
  XLA's memory analysis (temporaries, the input batch and the logits)."""
  treedef, leaves = params_signature
  params = None if treedef is None else jax.tree.unflatten(treedef, leaves)
  inputs = jax.ShapeDtypeStruct((batch,) + input_shape, jnp.float32)
  try:
    memory = (
        jax.jit(lambda params, inputs: bind(apply_fn, params)(inputs))
        .lower(params, inputs)
        .compile()
        .memory_analysis()
    )
    used = memory.temp_size_in_bytes + memory.output_size_in_bytes
  except Exception:  # pylint: disable=broad-except
    return None  # The backend has no memory analysis.
  return used / batch + math.prod(input_shape) * 4


def forward_batch_for_memory(
    apply_fn,
    params,
    input_shape,
    memory_budget: int | None,
    max_batch: int = DEFAULT_FORWARD_BATCH,
) -> int:
  """The largest forward batch <= max_batch whose activations fit the budget.

  The bound from the jaxpr (every intermediate value of a forward pass kept)
  decides when it fits max_batch; otherwise XLA's memory analysis of the
  compiled forward pass at max_batch gives the bytes per input (not less
  than twice the largest intermediate: an op's input and output coexist).
  """
  if memory_budget is None:
    return max_batch
  input_shape = tuple(input_shape)
  facts = classifier_facts(apply_fn, params, input_shape)
  input_bytes = math.prod(input_shape) * 4
  per_input = facts.intermediate_bytes + input_bytes
  if per_input * max_batch <= memory_budget:
    return max_batch
  signature = (None, ()) if params is None else abstract_signature(params)
  try:
    measured = _compiled_bytes_per_input(
        apply_fn, signature, input_shape, max_batch
    )
  except TypeError:  # Unhashable apply_fn.
    measured = _compiled_bytes_per_input.__wrapped__(
        apply_fn, signature, input_shape, max_batch
    )
  if measured is not None:
    per_input = max(measured, 2 * facts.largest_bytes + input_bytes)
  return int(max(1, min(max_batch, memory_budget // per_input)))


def auto_chunk_size(
    apply_fn,
    params,
    input_shape,
    batch: int,
    num_items: int,
    *,
    devices: int = 1,
    device=None,
    memory_budget: int | None | str = "device",
) -> int:
  """The chunk size `dssn_counts` and `sample_counts` use by default.

  Each device evaluates `rows` inputs (its share of the batch, or the whole
  batch when the noise samples are split over devices) on `chunk` noise
  samples per forward pass, so that rows * chunk noisy inputs fit
  `forward_batch_for_memory` (at most `default_forward_batch()`).

  Args:
    apply_fn, params: the classifier, as given to `dssn_counts`.
    input_shape: shape of one input.
    batch: inputs per call.
    num_items: noise samples per input (L for DSSN).
    devices: devices of the mesh (1 without one).
    device: a device of the mesh, whose kind and memory size the forward
      batch (default: the first local device).
    memory_budget: bytes a forward pass may use per device; "device" asks
      the device (`device_memory_budget`), None means unlimited.

  Returns:
    The chunk size, in 1..num_items per device.
  """
  if batch >= devices:
    rows, items = math.ceil(batch / devices), num_items
  else:
    rows, items = batch, math.ceil(num_items / devices)
  if memory_budget == "device":
    memory_budget = device_memory_budget(device)
  facts = classifier_facts(apply_fn, params, tuple(input_shape))
  forward_batch = forward_batch_for_memory(
      apply_fn,
      params,
      input_shape,
      memory_budget,
      default_forward_batch(
          device,
          bytes_per_input=facts.intermediate_bytes + math.prod(input_shape) * 4,
      ),
  )
  return min(default_chunk_size(rows, items, forward_batch), items)
