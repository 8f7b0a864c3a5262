"""Exact DSSN certification: counts over all L samples, then the certificate.

`dssn_counts` runs the vote program (`votes.py`) with the k-th deterministic
sample (`smoothing.dssn_noise`) as item k, k = 0..L-1; `certify_from_counts`
turns the counts into a prediction and an exact l1 radius (design.md,
section 1). `dssn_program` is the one place a DSSN call is checked and its
program set up; the same program is run by `dssn_counts` and lowered,
without running or placing anything, by `lower_counts`.

Without an explicit `chunk_size`, `chunking.auto_chunk_size` picks one that
fits the device's memory, and on CPUs keeps a forward pass's activations
near the caches (`chunking.default_forward_batch`).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from dssn_jax.core import chunking
from dssn_jax.core import inputs
from dssn_jax.core import placement
from dssn_jax.core import smoothing
from dssn_jax.core.smoothing import SmoothingSpec
from dssn_jax.core.votes import VoteProgram


@functools.cache
def _dssn_sample(spec: SmoothingSpec):
  """make_noisy for DSSN: item k is the k-th deterministic sample."""

  def make_noisy(x, row_ids, v, k):
    del row_ids  # The same k for every row.
    return smoothing.dssn_noise(x, v, k, spec)

  return make_noisy


def dssn_program(
    apply_fn: Callable[..., jax.Array],
    x,
    v,
    spec: SmoothingSpec,
    *,
    params: Any = None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
    num_items: int | None = None,
) -> tuple[VoteProgram, tuple[Any, ...]]:
  """Checks a `dssn_counts` call; returns its program and arguments.

  Args:
    apply_fn, x, v, spec, params, chunk_size, mesh: as in `dssn_counts`; x,
      v and params may also be abstract (`jax.ShapeDtypeStruct`), then only
      their shapes and dtypes are checked.
    num_items: evaluate only the noise samples k < num_items (default L, the
      whole certification); a prefix is the same scan body run fewer times.

  Returns:
    (program, args): `program(*args)` runs the (B, C) int32 counts over the
    samples k < num_items, `program.lower(*args)` lowers it. args are
    (params, x, row_ids, v) as given (nothing converted or placed).
  """
  num_items = spec.levels if num_items is None else num_items
  if not 1 <= num_items <= spec.levels:
    raise ValueError(f"num_items must be in 1..{spec.levels}, got {num_items}.")
  inputs.check_offsets(v, spec)
  inputs.check_inputs(x, v.shape, q=spec.q)  # numpy x: before a transfer.
  input_shape = tuple(v.shape)
  inputs.check_classifier(apply_fn, params, input_shape)  # Logits' shape.
  chunk_size = inputs.check_chunk_size(chunk_size)
  if chunk_size is None:
    chunk_size = chunking.auto_chunk_size(
        apply_fn,
        params,
        input_shape,
        x.shape[0],
        spec.levels,
        devices=placement.mesh_size(mesh),
        device=placement.first_device(mesh),
    )
  row_ids = np.zeros(x.shape[0], np.int32)  # DSSN noise is per sample k.
  program = VoteProgram(
      apply_fn=apply_fn,
      make_noisy=_dssn_sample(spec),
      num_items=num_items,
      chunk_size=chunk_size,
      mesh=mesh,
      grid_q=spec.q,
      offsets_levels=spec.levels,
  )
  return program, (params, x, row_ids, v)


def dssn_counts(
    apply_fn: Callable[..., jax.Array],
    x,
    v,
    spec: SmoothingSpec,
    *,
    params: Any = None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
) -> jax.Array:
  """Exact DSSN vote counts: the base classifier on all L noisy copies.

  One jitted computation (compiled once per apply_fn, spec, shapes, chunk size
  and mesh; pass the same apply_fn object to reuse it). Identical counts for
  any chunk size, batch size and mesh, given a classifier whose logits for an
  input do not depend on the rest of its batch.

  Args:
    apply_fn: `apply_fn(batch) -> logits`, batch (n, *shape) float in [0, 1],
      logits (n, C); or `apply_fn(params, batch)` when params is given
      (passing params as an argument keeps them out of the compiled program).
    x: (B, *shape) inputs on the grid {0, 1/q, ..., 1}.
    v: int offsets of shape `shape` in {0..L-1} (`make_offsets`).
    spec: the smoothing spec.
    params: optional first argument of apply_fn.
    chunk_size: noise samples per forward pass; default
      `chunking.auto_chunk_size`: up to `chunking.default_forward_batch()`
      noisy inputs per forward pass per device, fewer when they would not
      fit its memory.
    mesh: optional device mesh to shard the work over.

  Returns:
    (B, C) int32 counts; each row sums to L.

  A row whose classifier gives a non-finite logit on any of its noisy copies
  gets counts of -1 in every class: no vote, no certificate
  (`certify_from_counts` raises on such a row eagerly and abstains on it
  under jit). The call does not wait for the device to find out.

  Raises:
    ValueError: eagerly (concrete x and v), for inputs off the grid, out of
      [0, 1] or NaN, and offsets out of range. Under `jax.jit` or `jax.vmap`
      values are unknown at trace time: the program checks them itself and
      gives an invalid row counts of -1 too. Shapes and dtypes are checked
      at trace time in both cases.
  """
  program, args = dssn_program(
      apply_fn,
      x,
      v,
      spec,
      params=params,
      chunk_size=chunk_size,
      mesh=mesh,
  )
  return program(*args)


def lower_counts(
    apply_fn: Callable[..., jax.Array],
    x,
    v,
    spec: SmoothingSpec,
    *,
    params: Any = None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
    num_items: int | None = None,
) -> jax.stages.Lowered:
  """The jitted program of `dssn_counts`, lowered but neither compiled nor run.

  Compiling it ahead of a call moves compilation out of a timed region (the
  call with arguments of the same shapes then compiles nothing); tools read
  its HLO and XLA's cost and memory analysis from it. x, v and params may be
  concrete or abstract (`jax.ShapeDtypeStruct`, e.g. `jax.ShapeDtypeStruct(
  (batch,) + shape, jnp.float32)`): only their shapes and dtypes are read,
  nothing is computed or placed on a device, so the mesh may be made of
  compile-only devices. With a chunk size of None, the classifier is traced
  to size it for the mesh's first device.

  Args:
    apply_fn, x, v, spec, params, chunk_size, mesh: as in `dssn_counts`.
    num_items: lower only the noise samples k < num_items (default L, the
      whole certification); a prefix is the same scan body run fewer times.

  Returns:
    A `jax.stages.Lowered`; `.compile()` gives the executable, which takes
    the (params, x, row_ids, v) of `dssn_program` placed as
    `placement.place` puts them.
  """
  program, args = dssn_program(
      apply_fn,
      x,
      v,
      spec,
      params=params,
      chunk_size=chunk_size,
      mesh=mesh,
      num_items=num_items,
  )
  return program.lower(*args)


def certify_from_counts(counts, spec: SmoothingSpec):
  """Prediction and exact l1 certificate from DSSN vote counts.

  A is the class with the most votes (lowest index among ties); B the
  runner-up, the next entry of a stable sort by descending count. Then
  `steps = floor((c[A] - c[B] - [B < A]) / 2)` and `radius = steps / q`.
  Works on numpy arrays (radius in float64) and inside jit on jax arrays.

  Counts must be what `dssn_counts` returns for this spec: non-negative, each
  row summing to L. Concrete counts that are not raise a ValueError; under
  jit such a row (e.g. the -1 row of an invalid input) abstains: pred -1,
  steps 0, radius 0.

  Args:
    counts: (B, C) integer vote counts, C >= 2.
    spec: the smoothing spec (for q and L).

  Returns:
    (pred, steps, radius): (B,) int32 class (-1: abstain), (B,) int32 grid
    steps, (B,) float radius in l1 input units.
  """
  xp = np if isinstance(counts, np.ndarray) else jnp
  if counts.ndim != 2 or counts.shape[1] < 2:
    raise ValueError(
        f"counts must have shape (batch, num_classes) with at least 2 "
        f"classes, got {tuple(counts.shape)}."
    )
  if not xp.issubdtype(counts.dtype, xp.integer):
    raise ValueError(f"counts must be integers, got dtype {counts.dtype}.")
  if inputs.has_values(counts):
    _check_counts(np.asarray(counts), spec)
  order = xp.argsort(
      -counts.astype(xp.int64 if xp is np else xp.int32), axis=1, stable=True
  )
  top, runner_up = order[:, 0], order[:, 1]
  count_top = xp.take_along_axis(counts, order[:, :1], axis=1)[:, 0]
  count_runner_up = xp.take_along_axis(counts, order[:, 1:2], axis=1)[:, 0]
  gap = count_top - count_runner_up - (runner_up < top).astype(counts.dtype)
  steps = (gap // 2).astype(xp.int32)
  pred = top.astype(xp.int32)
  if not inputs.has_values(counts):
    valid = jnp.all(counts >= 0, axis=1) & (
        jnp.sum(counts, axis=1) == spec.levels
    )
    pred = jnp.where(valid, pred, -1)
    steps = jnp.where(valid, steps, 0)
  radius = steps / spec.q if xp is np else steps.astype(jnp.float32) / spec.q
  return pred, steps, radius


def _check_counts(counts: np.ndarray, spec: SmoothingSpec) -> None:
  """Raises ValueError unless every row is a valid DSSN vote count."""
  negative = np.flatnonzero((counts < 0).any(axis=1))
  if negative.size:
    raise ValueError(
        f"counts must be non-negative, rows {negative[:10].tolist()} are not. "
        f"dssn_counts gives a row of -1 (no certificate) where the classifier "
        f"returned non-finite logits, or, under jit or vmap, where the input "
        f"or the offsets were invalid."
    )
  sums = counts.sum(axis=1, dtype=np.int64)
  wrong = np.flatnonzero(sums != spec.levels)
  if wrong.size:
    raise ValueError(
        f"every row of counts must sum to L = {spec.levels} (the number of "
        f"DSSN samples for sigma={spec.sigma}, q={spec.q}); rows "
        f"{wrong[:10].tolist()} sum to {sums[wrong[:10]].tolist()}. Pass the "
        f"spec the counts were computed with."
    )
