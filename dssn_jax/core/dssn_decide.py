"""DSSN with an exact early exit: only as many splits as the answers need.

`dssn_decide` certifies a dataset's inputs at requested radii, packing the
splits of all unfinished inputs into every forward pass (`packing.py`) and
stopping each input as soon as `early_exit.decide` says its prediction and
its answer at every requested radius are those of the full enumeration.
`dssn_certified_at` is the one-question form for a deployed model, usable
under `jax.jit`: evaluate splits chunk by chunk for a batch until every
input is decided at epsilon.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from dssn_jax.core import chunking
from dssn_jax.core import early_exit
from dssn_jax.core import inputs
from dssn_jax.core import packing
from dssn_jax.core import placement
from dssn_jax.core import smoothing
from dssn_jax.core.smoothing import SmoothingSpec


@functools.cache
def _split_noise(spec: SmoothingSpec):
  """Packed make_noisy of DSSN: split k of one input (one group)."""

  def make_noisy(x_row, row_id, v, group, k):
    del row_id, group
    return smoothing.dssn_noise(x_row, v, k, spec)

  return make_noisy


@dataclasses.dataclass
class DssnDecision:
  """The answers of an early-exit DSSN run (numpy, N inputs, K radii).

  Attributes:
    radii: (K,) the requested radii.
    pred: (N,) int32 prediction (-1: no certificate, invalid input).
    certified: (N, K) bool, final radius >= radii[k] (implies pred >= 0).
    counts: (N, C) int32 votes of those splits (-1: invalid input).
    splits: (N,) splits the answers rest on (L for a full enumeration).
    evaluated: (N,) splits evaluated (dispatch runs one step ahead).
    passes: forward passes run; slots: inputs per forward pass.
  """

  radii: np.ndarray
  pred: np.ndarray
  certified: np.ndarray
  counts: np.ndarray
  splits: np.ndarray
  evaluated: np.ndarray
  passes: int
  slots: int

  def largest_certified(self) -> np.ndarray:
    """(N,) largest requested radius certified, NaN where none is."""
    return _largest(self.radii, self.certified)

  def smallest_refused(self) -> np.ndarray:
    """(N,) smallest requested radius refused, NaN where none is."""
    return _smallest(self.radii, ~self.certified)


def _largest(radii, mask):
  values = np.where(mask, radii[None, :], -np.inf)
  best = values.max(axis=1, initial=-np.inf)
  return np.where(np.isfinite(best), best, np.nan)


def _smallest(radii, mask):
  values = np.where(mask, radii[None, :], np.inf)
  best = values.min(axis=1, initial=np.inf)
  return np.where(np.isfinite(best), best, np.nan)


def dssn_decide(
    apply_fn: Callable[..., jax.Array],
    x,
    v,
    spec: SmoothingSpec,
    radii: Sequence[float],
    *,
    params: Any = None,
    slots: int | None = None,
    pool_size: int | None = None,
    mesh: Mesh | None = None,
) -> DssnDecision:
  """Prediction and certificate at each requested radius, with early exit.

  The answers equal those of `certify_from_counts(dssn_counts(...))` input
  for input and radius for radius (design.md, section 7); only the number
  of splits differs. Host loop; not for use under jit (`dssn_certified_at`
  is).

  Args:
    apply_fn, x, v, spec, params, mesh: as in `dssn_counts` (x concrete).
    radii: requested l1 radii, [0, 1] pixel units.
    slots: (input, split) pairs per forward pass; default
      `chunking.default_forward_batch()` times the mesh size.
    pool_size: inputs on the device at once; default 4 * slots / L + 8.
  """
  x = np.asarray(x)
  inputs.check_offsets(v, spec)
  inputs.check_inputs(x, np.shape(v), q=spec.q)
  inputs.check_classifier(apply_fn, params, tuple(np.shape(v)))
  radii = np.asarray(radii, np.float64).reshape(-1)
  thresholds = early_exit.radius_steps(radii, spec.q)
  devices = placement.mesh_size(mesh)
  if slots is None:
    slots = chunking.default_forward_batch() * devices
  slots = -(-slots // devices) * devices
  if pool_size is None:
    pool_size = 4 * slots // spec.levels + 8
  levels = spec.levels

  def decide(counts, used):
    return early_exit.decide(counts[:, 0], levels - used, thresholds).decided

  program = packing.PackedProgram(apply_fn, _split_noise(spec), 1, mesh)
  v = jnp.asarray(v)
  if mesh is not None:
    params, v = packing.replicate(mesh, (params, v))
  result = packing.run_packed(
      program,
      params,
      v,
      x,
      np.zeros(x.shape[0], np.int32),
      packing.ItemLayout((0,), levels),
      decide,
      slots=slots,
      pool_size=pool_size,
  )
  counts = result.counts[:, 0]
  ok = counts[:, 0] >= 0
  final = early_exit.decide(
      np.maximum(counts, 0), levels - result.used, thresholds
  )
  pred = np.where(ok, final.pred, -1).astype(np.int32)
  certified = final.certified & ok[:, None]
  return DssnDecision(
      radii,
      pred,
      certified,
      np.where(ok[:, None], counts, -1),
      result.used,
      result.evaluated,
      result.passes,
      slots,
  )


@functools.partial(
    jax.jit, static_argnames=("apply_fn", "spec", "chunk_size", "thresholds")
)
def _certified_at(params, x, v, *, apply_fn, spec, chunk_size, thresholds):
  levels = spec.levels
  forward = chunking.bind(apply_fn, params)
  batch = x.shape[0]
  s = jnp.asarray(thresholds, jnp.int32)

  def chunk_counts(start):
    ks = start + jnp.arange(chunk_size)
    noisy = jax.vmap(lambda k: smoothing.dssn_noise(x, v, k, spec))(ks)
    logits = forward(noisy.reshape((-1,) + x.shape[1:]))
    num_classes = logits.shape[-1]
    votes = jnp.argmax(logits, -1).reshape(chunk_size, batch)
    hits = votes[..., None] == jnp.arange(num_classes)
    bad = ~jnp.all(jnp.isfinite(logits), -1).reshape(chunk_size, batch)
    hits = jnp.concatenate([hits, bad[..., None]], -1)
    return jnp.sum(hits & (ks < levels)[:, None, None], 0, dtype=jnp.int32)

  shape = jax.eval_shape(chunk_counts, 0)

  def undecided(state):
    counts, done = state
    left = levels - jnp.minimum(done, levels)
    d = early_exit.decide(counts[:, :-1], left, s)
    return (done < levels) & ~jnp.all(d.decided | (counts[:, -1] > 0))

  def body(state):
    counts, done = state
    return counts + chunk_counts(done), done + chunk_size

  counts, done = jax.lax.while_loop(
      undecided, body, (jnp.zeros(shape.shape, jnp.int32), jnp.int32(0))
  )
  used = jnp.minimum(done, levels)
  d = early_exit.decide(counts[:, :-1], levels - used, s)
  ok = inputs.valid_rows(x, spec.q) & inputs.valid_offsets(v, levels)
  ok &= counts[:, -1] == 0
  pred = jnp.where(ok, d.pred, -1)
  return pred, d.certified & ok[:, None], used


def dssn_certified_at(
    apply_fn: Callable[..., jax.Array],
    x,
    v,
    spec: SmoothingSpec,
    epsilon: float | Sequence[float],
    *,
    params: Any = None,
    chunk_size: int = 16,
):
  """Is each input of a batch certified at epsilon? Few splits; jit-able.

  Splits are evaluated chunk by chunk (a `lax.while_loop`) until every
  input of the batch has its prediction and its answer at each epsilon
  determined (`early_exit.decide`), at most all L. The answers are those of
  the full enumeration. As with `dssn_counts` under jit, an invalid input
  (off the grid, offsets out of range, non-finite logits) gets no
  certificate: pred -1, certified False. Call it on one input for the
  fewest splits (a batch runs until its slowest input is decided).

  Args:
    apply_fn, x, v, spec, params: as in `dssn_counts`.
    epsilon: one radius or a sequence of K radii (static).
    chunk_size: splits per forward pass and input.

  Returns:
    (pred (B,) int32, certified (B,) or (B, K) bool, splits used (int32)).
  """
  scalar = np.ndim(epsilon) == 0
  thresholds = tuple(
      int(s) for s in early_exit.radius_steps(np.ravel(epsilon), spec.q)
  )
  inputs.check_classifier(apply_fn, params, tuple(np.shape(v)))
  pred, certified, used = _certified_at(
      params,
      x,
      v,
      apply_fn=apply_fn,
      spec=spec,
      chunk_size=min(chunk_size, spec.levels),
      thresholds=thresholds,
  )
  return pred, (certified[:, 0] if scalar else certified), used
