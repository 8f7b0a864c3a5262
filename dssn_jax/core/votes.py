"""The vote program both certifiers run: argmax votes over noisy copies.

The base classifier is evaluated on noisy copies of a batch, `chunk_size`
noise items at a time (vmapped), with a `lax.scan` over chunks so device
memory holds one chunk of noisy inputs, never all of them. Votes are the
argmax of the logits, first index winning ties, accumulated as int32 counts.
What an item is (the k-th deterministic DSSN sample, or the j-th random
draw) is the caller's `make_noisy`: `dssn.py` and `randomized.py`.

Over a device mesh the batch is split across devices with `shard_map`; a
batch smaller than the device count splits the noise items instead and sums
the counts with `psum`. Counts are integers, so every split gives the same
counts.

A `VoteProgram` holds everything static about one program. It is the one
path to the compiled program: calling it runs the program on concrete
arguments; `lower` lowers the same jitted function from abstract ones
(`placement.abstract`: shapes, dtypes and the shardings a call would use),
without computing anything or placing any array, so a program can be
compiled ahead of a call (the call then finds it in JAX's cache) or for
devices this process cannot run on.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dssn_jax.core import chunking
from dssn_jax.core import placement
from dssn_jax.core.inputs import check_logits
from dssn_jax.core.inputs import valid_offsets
from dssn_jax.core.inputs import valid_rows


@dataclasses.dataclass(frozen=True)
class VoteProgram:
  """Everything static about one vote-counting program.

  Hashable (functions by identity): it is the static argument of the jitted
  program, so equal programs share one compilation. The arguments of the
  program are (params, x, row_ids, aux): apply_fn's params (a pytree, or
  None for apply_fn(batch)), the inputs x (B, *shape), their identities
  row_ids (B,) int32 (for per-input noise keys) and the replicated noise
  arguments aux (offsets or a PRNG key).

  A row gets counts of -1 in every class (no certificate:
  `certify_from_counts` abstains on it) when its input is invalid
  (`valid_rows`), when the offsets are out of range, or when any of its
  samples' logits is not finite.

  Attributes:
    apply_fn: the classifier, apply_fn(params, batch) -> logits (n, C), or
      apply_fn(batch) when params is None.
    make_noisy: (x_rows, row_ids, aux, item) -> noisy rows.
    num_items: noise items per input (L for DSSN, N for sampling).
    chunk_size: items per forward pass; None picks
      `chunking.default_chunk_size` (the public functions pass
      `chunking.auto_chunk_size`).
    mesh: device mesh, or None for the default device.
    grid_q: inputs must lie on the 1/grid_q grid (None: only in [0, 1]).
    offsets_levels: aux holds offsets that must lie in {0..levels-1}.
  """

  apply_fn: Callable[..., jax.Array]
  make_noisy: Callable[..., jax.Array]
  num_items: int
  chunk_size: int | None
  mesh: Mesh | None
  grid_q: int | None = None
  offsets_levels: int | None = None

  def __call__(self, params, x, row_ids, aux) -> jax.Array:
    """(B, C) int32 counts: runs the program on the arguments placed by
    `place` (under the caller's jit or vmap the program becomes part of the
    caller's). Does not wait for the device."""
    return _vote_counts(*self.place(params, x, row_ids, aux), program=self)

  def place(self, params, x, row_ids, aux) -> tuple[Any, ...]:
    """The arguments as the program runs on them: concrete ones put on the
    mesh (`placement.place`), so `lower(...).compile()(*place(...))` is a
    call of the program too."""
    return placement.place(self.mesh, (params, x, row_ids, aux))

  def lower(self, params, x, row_ids, aux) -> jax.stages.Lowered:
    """The program `__call__` runs on such arguments, lowered, not compiled.

    Arguments may be concrete, traced or abstract (`jax.ShapeDtypeStruct`,
    with or without the sharding the program runs them with): only their
    shapes and dtypes are read (`placement.abstract`), so nothing is
    computed or placed, and the mesh may hold compile-only devices.
    `lower(...).compile()` compiles what a later call with arguments of
    these shapes runs (it finds the executable in JAX's cache).
    """
    args = placement.abstract(self.mesh, (params, x, row_ids, aux))
    return _vote_counts.lower(*args, program=self)


@functools.partial(jax.jit, static_argnames=("program",))
def _vote_counts(params, x, row_ids, aux, *, program: VoteProgram):
  """The jitted program of `VoteProgram`: (B, C) int32 counts."""
  counts = _counts_over_mesh(params, x, row_ids, aux, program)
  ok = valid_rows(x, program.grid_q) & (counts[:, -1] == 0)
  if program.offsets_levels is not None:
    ok &= valid_offsets(aux, program.offsets_levels)
  return jnp.where(ok[:, None], counts[:, :-1], -1)


def _counts_over_mesh(params, x, row_ids, aux, program: VoteProgram):
  """`_accumulate_votes` over the mesh: (B, C + 1) counts and failures."""
  forward = chunking.bind(program.apply_fn, params)
  num_items, chunk_size, mesh = (
      program.num_items,
      program.chunk_size,
      program.mesh,
  )

  def local_counts(x, row_ids, aux, item_start, stride, items, varying=()):
    noisy = lambda item: program.make_noisy(x, row_ids, aux, item)
    chunk = chunk_size or chunking.default_chunk_size(x.shape[0], items)
    return _accumulate_votes(
        forward,
        noisy,
        items,
        min(chunk, items),
        item_start,
        stride,
        num_items,
        varying,
    )

  if mesh is None or mesh.size == 1:
    return local_counts(x, row_ids, aux, 0, 1, num_items)

  axes = tuple(mesh.axis_names)
  devices = mesh.size
  batch = x.shape[0]
  if batch >= devices:
    # Split the batch; pad it to a multiple of the device count with zeros
    # (a valid grid input) whose counts are dropped.
    padded = math.ceil(batch / devices) * devices
    pad = [(0, padded - batch)] + [(0, 0)] * (x.ndim - 1)
    counts = jax.shard_map(
        lambda x, ids, aux: local_counts(x, ids, aux, 0, 1, num_items, axes),
        mesh=mesh,
        in_specs=(P(axes), P(axes), P()),
        out_specs=P(axes),
    )(jnp.pad(x, pad), jnp.pad(row_ids, (0, padded - batch)), aux)
    return counts[:batch]

  # Fewer inputs than devices: device d evaluates items d, d + n, d + 2n, ...
  items_per_device = math.ceil(num_items / devices)

  def split_items(x, ids, aux):
    device = jax.lax.axis_index(axes)
    counts = local_counts(x, ids, aux, device, devices, items_per_device, axes)
    return jax.lax.psum(counts, axes)

  return jax.shard_map(
      split_items, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P()
  )(x, row_ids, aux)


def _accumulate_votes(
    forward,
    make_noisy,
    num_items: int,
    chunk_size: int,
    item_start,
    item_stride: int,
    num_valid: int,
    varying_axes: tuple[str, ...] = (),
):
  """Counts argmax votes of forward over noisy copies of one batch.

  One `lax.scan` over ceil(num_items / chunk_size) chunks of equal size, so
  the program holds a single copy of the forward pass and its memory does not
  depend on num_items; positions past num_items in the last chunk are
  evaluated but not counted (fewer than one per chunk on average, since the
  chunk size is evened out).

  Args:
    forward: batch (n, *shape) -> logits (n, C).
    make_noisy: item index (int32 scalar) -> noisy batch (B, *shape).
    num_items: how many items this call evaluates (a static int).
    chunk_size: items per forward pass, at most num_items.
    item_start: first item index (may be traced, e.g. a device index).
    item_stride: distance between consecutive items.
    num_valid: items with index >= num_valid are evaluated but not counted
      (only when several devices split the items unevenly).
    varying_axes: mesh axes the votes vary over inside `shard_map` (the
      initial counts get that type); () outside shard_map.

  Returns:
    (B, C + 1) int32: the vote counts of the C classes, then the number of
    counted samples whose logits were not all finite (they vote nonetheless;
    the caller must not certify a row where this is nonzero).
  """

  def chunk_votes(chunk_index):
    positions = chunk_index * chunk_size + jnp.arange(chunk_size)
    items = item_start + item_stride * positions
    noisy = jax.vmap(make_noisy)(items)  # (c, B, *shape)
    c, b = noisy.shape[:2]
    logits = forward(noisy.reshape((c * b,) + noisy.shape[2:]))
    check_logits(logits, noisy.shape[2:], c * b)
    num_classes = logits.shape[-1]
    votes = jnp.argmax(logits, axis=-1).reshape(c, b)  # First index on ties.
    hits = votes[..., None] == jnp.arange(num_classes, dtype=votes.dtype)
    # NaN compares false everywhere, so argmax would quietly vote class 0.
    non_finite = ~jnp.all(jnp.isfinite(logits), axis=-1).reshape(c, b)
    hits = jnp.concatenate([hits, non_finite[..., None]], axis=-1)
    counted = (positions < num_items) & (items < num_valid)
    hits &= counted[:, None, None]
    return jnp.sum(hits, axis=0, dtype=jnp.int32)

  num_chunks = math.ceil(num_items / chunk_size)
  if num_chunks == 1:
    return chunk_votes(0)
  shape = jax.eval_shape(chunk_votes, 0)
  counts = jnp.zeros(shape.shape, shape.dtype)
  if varying_axes:  # pcast since JAX 0.8.2; pvary before.
    if hasattr(jax.lax, "pcast"):
      counts = jax.lax.pcast(counts, varying_axes, to="varying")
    else:
      counts = jax.lax.pvary(counts, varying_axes)

  def body(counts, chunk_index):
    return counts + chunk_votes(chunk_index), None

  counts, _ = jax.lax.scan(body, counts, jnp.arange(num_chunks))
  return counts
