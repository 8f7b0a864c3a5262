"""Packing noise samples of many inputs into every forward pass.

Inputs certified with an early exit finish at different times, so a batch
of inputs would leave most of each forward pass idle once a few remain.
`run_packed` keeps a pool of unfinished inputs on the device and fills every
forward pass with `slots` (input, item) pairs taken from all of them: item u
of an input is its u-th noise sample (a DSSN split k, or a randomized draw,
`ItemLayout`). One compiled step per (pool, slots) shape does the forward
pass and adds its votes to the pool's counts; the host plans step t + 1
while step t runs and reads the counts of step t - 1 to decide which inputs
are done (a finished input's slot takes the next input).

Counts are integers added in any order, so an input's counts over items
0..u-1 are those of `dssn_counts` / `sample_counts` over the same items,
whatever the packing, pool, slot count or mesh.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from dssn_jax.core import chunking


@dataclasses.dataclass(frozen=True)
class ItemLayout:
  """How an input's items map to noise samples, in evaluation order.

  Item u belongs to group g (the last g with starts[g] <= u) and is sample
  u - starts[g] of that group: DSSN has one group (split k = u); the
  randomized certifiers two (n0 selection draws, then counting draws, each
  with its own key).

  Attributes:
    starts: first item of each group, starting with 0.
    total: items per input.
  """

  starts: tuple[int, ...]
  total: int

  def split(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, sample) of items u (int arrays)."""
    starts = np.asarray(self.starts)
    group = np.searchsorted(starts, u, side="right") - 1
    return group.astype(np.int32), (u - starts[group]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class PackedProgram:
  """Everything static about one packed step (hashable: jit's static arg).

  Attributes:
    apply_fn: apply_fn(params, batch) -> logits (n, C), or apply_fn(batch)
      when params is None.
    make_noisy: (x_row, row_id, aux, group, sample) -> one noisy input.
    groups: number of item groups (count rows per input).
    mesh: optional mesh; the slots are split over its devices.
  """

  apply_fn: Callable[..., jax.Array]
  make_noisy: Callable[..., jax.Array]
  groups: int
  mesh: Mesh | None = None


@functools.partial(jax.jit, static_argnames=("program",))
def _step(
    params,
    pool,
    pool_ids,
    aux,
    counts,
    rows,
    groups,
    samples,
    live,
    *,
    program: PackedProgram,
):
  """One forward pass over (row, group, sample) slots; adds their votes.

  counts: (P, groups, C + 1) int32, the last column counting samples whose
  logits were not all finite.
  """
  forward = chunking.bind(program.apply_fn, params)
  noisy = jax.vmap(program.make_noisy, in_axes=(0, 0, None, 0, 0))(
      pool[rows], pool_ids[rows], aux, groups, samples
  )
  if program.mesh is not None and program.mesh.size > 1:
    spec = P(tuple(program.mesh.axis_names))
    noisy = jax.lax.with_sharding_constraint(
        noisy, NamedSharding(program.mesh, spec)
    )
  logits = forward(noisy)
  num_classes = logits.shape[-1]
  votes = jnp.argmax(logits, axis=-1)  # First index on ties, as votes.py.
  hits = votes[:, None] == jnp.arange(num_classes)
  bad = ~jnp.all(jnp.isfinite(logits), axis=-1)
  hits = jnp.concatenate([hits, bad[:, None]], axis=1) & live[:, None]
  return counts.at[rows, groups].add(hits.astype(jnp.int32))


@jax.jit
def _reset_rows(pool, pool_ids, counts, slots, x_new, ids_new):
  """Loads new inputs into pool rows `slots` (entries past the pool are
  padding, dropped), their counts zeroed; one shape, one compilation."""
  return (
      pool.at[slots].set(x_new, mode="drop"),
      pool_ids.at[slots].set(ids_new, mode="drop"),
      counts.at[slots].set(0, mode="drop"),
  )


def replicate(mesh: Mesh | None, tree):
  """Concrete arrays of tree put on every device of the mesh (none: as
  is); the pool, its counts and the shared noise arguments live so."""
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))


@dataclasses.dataclass
class PackedResult:
  """Per input (numpy): counts at the decision, items used, passes run.

  Attributes:
    counts: (N, groups, C) int32 counts over the input's first `used`
      items; -1 everywhere where a sample's logits were not finite.
    used: (N,) items the counts cover (where the input was decided).
    evaluated: (N,) items evaluated, used ones plus those dispatched before
      the decision was read (one step ahead).
    passes: forward passes (steps) run.
    slots: items per forward pass.
  """

  counts: np.ndarray
  used: np.ndarray
  evaluated: np.ndarray
  passes: int
  slots: int


def _plan(active, next_item, limit, slots):
  """Shares `slots` among the active pool rows, in order, each up to its
  limit; returns (rows, items) int arrays of the planned (row, item) pairs
  and advances next_item in place."""
  rows, items = [], []
  want = np.where(active, limit - next_item, 0)
  free = slots
  while free > 0 and want.sum() > 0:
    todo = np.flatnonzero(want > 0)
    share = max(free // todo.size, 1)
    for r in todo:
      take = min(share, want[r], free)
      if take <= 0:
        break
      rows.append(np.full(take, r, np.int32))
      items.append(np.arange(next_item[r], next_item[r] + take, dtype=np.int64))
      next_item[r] += take
      want[r] -= take
      free -= take
  if not rows:
    return np.zeros(0, np.int32), np.zeros(0, np.int64)
  return np.concatenate(rows), np.concatenate(items)


def run_packed(
    program: PackedProgram,
    params: Any,
    aux: Any,
    x: np.ndarray,
    row_ids: np.ndarray,
    layout: ItemLayout,
    decide: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    slots: int,
    pool_size: int,
    looks: np.ndarray | None = None,
) -> PackedResult:
  """Counts votes of every input until `decide` says it is done.

  Args:
    program: the packed step.
    params: apply_fn's params (or None).
    aux: noise arguments shared by all inputs (offsets, keys).
    x: (N, *shape) inputs (already checked by the caller).
    row_ids: (N,) int32 identities (noise keys of randomized draws).
    layout: the items of one input.
    decide: (counts (n, groups, C), used (n,)) -> (n,) bool done; called
      on inputs whose used items are a look (or any, without looks), and
      never needed at used == layout.total (always done there).
    slots: (input, item) pairs per forward pass (a multiple of the mesh).
    pool_size: inputs held on the device at once.
    looks: sorted item counts at which `decide` may be asked; a step never
      takes an input past its next look, so its counts at a look exist.

  Returns:
    A `PackedResult`.
  """
  n = x.shape[0]
  pool_size = max(1, min(pool_size, n))
  looks = None if looks is None else np.unique(np.append(looks, layout.total))
  logits = jax.eval_shape(
      chunking.bind(program.apply_fn, params),
      jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype),
  )
  num_classes = logits.shape[-1]
  pool = jnp.zeros((pool_size,) + x.shape[1:], x.dtype)
  pool_ids = jnp.zeros((pool_size,), jnp.int32)
  counts = jnp.zeros((pool_size, program.groups, num_classes + 1), jnp.int32)
  member = np.full(pool_size, -1)  # The input each pool row holds.
  next_item = np.zeros(pool_size, np.int64)
  out = np.zeros((n, program.groups, num_classes), np.int32)
  used = np.zeros(n, np.int64)
  evaluated = np.zeros(n, np.int64)
  done = np.zeros(n, bool)
  queue, passes, pending = 0, 0, None

  def holding():
    return (member >= 0) & ~done[np.maximum(member, 0)]

  while True:
    free_rows = np.flatnonzero(~holding())[: n - queue]
    if free_rows.size:
      new = np.arange(queue, queue + free_rows.size)
      queue += free_rows.size
      pad = pool_size - free_rows.size
      pool, pool_ids, counts = _reset_rows(
          pool,
          pool_ids,
          counts,
          jnp.asarray(np.r_[free_rows, np.full(pad, pool_size)], jnp.int32),
          jnp.asarray(
              np.concatenate([x[new], np.zeros((pad,) + x.shape[1:], x.dtype)])
          ),
          jnp.asarray(np.r_[row_ids[new], np.zeros(pad)], jnp.int32),
      )
      member[free_rows], next_item[free_rows] = new, 0
    snapshot = None
    limit = _limits(next_item, looks, layout.total)
    rows, items = _plan(holding(), next_item, limit, slots)
    if rows.size:
      counts = _dispatch(
          program,
          params,
          pool,
          pool_ids,
          aux,
          counts,
          rows,
          items,
          layout,
          slots,
      )
      passes += 1
      evaluated[member[rows]] = np.maximum(
          evaluated[member[rows]], next_item[rows]
      )
      snapshot = (counts, member.copy(), next_item.copy())
    if pending is not None:  # Read the step before while this one runs.
      _read(pending, done, out, used, decide, looks, layout.total)
    pending = snapshot
    if done.all():
      break
    if pending is None and not rows.size and (queue >= n or holding().all()):
      raise RuntimeError("packing made no progress (a bug).")
  return PackedResult(out, used, evaluated, passes, slots)


def _limits(next_item, looks, total):
  """Per pool row, the item count the next step may take it to."""
  if looks is None:
    return np.full(next_item.shape, total)
  return looks[
      np.searchsorted(looks, next_item, side="right").clip(max=looks.size - 1)
  ]


def _dispatch(
    program, params, pool, pool_ids, aux, counts, rows, items, layout, slots
):
  """Runs one step on the planned (row, item) pairs, padded to `slots`."""
  groups, samples = layout.split(items)
  pad = slots - rows.size
  zeros = np.zeros(pad, np.int32)
  return _step(
      params,
      pool,
      pool_ids,
      aux,
      counts,
      jnp.asarray(np.r_[rows, zeros].astype(np.int32)),
      jnp.asarray(np.r_[groups, zeros]),
      jnp.asarray(np.r_[samples, zeros]),
      jnp.asarray(np.arange(slots) < rows.size),
      program=program,
  )


def _read(pending, done, out, used, decide, looks, total):
  """Decides the inputs of a finished step; records those that are done."""
  counts, member, progress = pending
  rows = np.flatnonzero((member >= 0) & ~done[np.maximum(member, 0)])
  if not rows.size:
    return
  host = np.asarray(counts)[rows]
  ids, u = member[rows], progress[rows]
  failed = host[:, :, -1].sum(axis=1) > 0
  at_look = np.ones(rows.size, bool) if looks is None else np.isin(u, looks)
  finished = u >= total
  ask = at_look & ~finished & ~failed & (u > 0)
  verdict = np.zeros(rows.size, bool)
  if ask.any():
    verdict[ask] = np.asarray(decide(host[ask][:, :, :-1], u[ask]), bool)
  stop = verdict | finished | failed
  out[ids[stop]] = np.where(failed[stop, None, None], -1, host[stop][:, :, :-1])
  used[ids[stop]] = u[stop]
  done[ids[stop]] = True
