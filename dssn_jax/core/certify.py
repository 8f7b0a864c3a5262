"""Exact DSSN certification and the randomized baselines.

Both certifiers share one jitted vote-counting loop: the base classifier is
evaluated on noisy copies of a batch, `chunk_size` noise samples at a time
(vmapped), with a `lax.scan` over chunks so device memory holds one chunk of
noisy inputs, never all of them. Votes are the argmax of the logits, first
index winning ties, accumulated as int32 counts.

Over a device mesh the batch is split across devices with `shard_map`; a batch
smaller than the device count splits the noise samples instead and sums the
counts with `psum`. Counts are integers, so every split gives the same counts.

Without an explicit `chunk_size`, `chunking.auto_chunk_size` picks one that
fits the device's memory, and on CPUs keeps a forward pass's activations
near the caches (`chunking.default_forward_batch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from dssn_jax.core import chunking
from dssn_jax.core import smoothing
from dssn_jax.core.clopper_pearson import clopper_pearson_lower
from dssn_jax.core.methods import RANDOMIZED_NOISE_KINDS
from dssn_jax.core.smoothing import SmoothingSpec

# Inputs within this many ulps of their dtype of a grid value a/q are on the
# grid: float rounding of a/q, however computed, is within 1.3 ulps.
GRID_TOLERANCE_ULPS = 2
# A dtype resolves the 1/q grid when a step spans at least this many ulps
# near 1 (float32: q <= 2**20; float16 and bfloat16 fail at q = 255).
MIN_ULPS_PER_STEP = 16


# ----------------------------------------------------------------------------
# Input validation: eager checks with exact messages on concrete arrays, and
# the same conditions as a per-row mask inside the jitted program, so that a
# traced call (under jit or vmap) never certifies an invalid input.
# ----------------------------------------------------------------------------


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _grid_tolerance(values: np.ndarray, dtype) -> np.ndarray:
  """Largest |x - a/q| accepted as "on the grid", per value (float64).

  GRID_TOLERANCE_ULPS units in the last place of x's dtype: any float rounding
  of a/q (correctly rounded division, or XLA's multiplication by the rounded
  reciprocal, up to 1.3 ulps) is accepted, a value further off is not. The
  float64 slack covers the rounding of this check itself.
  """
  magnitude = np.abs(values).astype(dtype)
  return GRID_TOLERANCE_ULPS * np.spacing(magnitude).astype(
      np.float64
  ) + 2 * np.spacing(np.abs(values))


def check_input_dtype(dtype, q: int | None) -> None:
  """Raises ValueError unless inputs of this dtype can be checked and
  certified on the 1/q grid (a static property: also checked under jit)."""
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"x must be floating point in [0, 1], got dtype {dtype}; convert "
        f"8-bit images with x = image / 255."
    )
  if q is not None and MIN_ULPS_PER_STEP * jnp.finfo(dtype).eps > 1 / q:
    raise ValueError(
        f"x has dtype {jnp.dtype(dtype).name}, too coarse for the 1/{q} grid "
        f"(its rounding error near 1 is within a factor "
        f"{MIN_ULPS_PER_STEP // 2} of a grid step, so on-grid and off-grid "
        f"values cannot be told apart). Pass float32 inputs, e.g. x = "
        f"image.astype(np.float32) / {q}; the classifier may still compute "
        f"in a lower precision."
    )


def check_inputs(x, input_shape, *, q: int | None = None) -> None:
  """Raises ValueError unless x is a batch of valid inputs in [0, 1].

  Shape and dtype are checked always; values only when x is concrete (under
  jit or vmap, `dssn_counts` masks invalid rows in the program instead).

  Args:
    x: (B, *input_shape) floating inputs.
    input_shape: the shape of one input.
    q: when given, x must also lie on the grid {0, 1/q, ..., 1}: within
      `GRID_TOLERANCE_ULPS` ulps of its dtype of a grid value a/q.
  """
  input_shape = tuple(input_shape)
  if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape:
    raise ValueError(
        f"x must have shape (batch, *{input_shape}) to match the offsets, got "
        f"{tuple(x.shape)}."
    )
  if x.shape[0] == 0:
    raise ValueError("x is an empty batch.")
  check_input_dtype(x.dtype, q)
  if not _is_concrete(x):
    return  # Values are checked only where they are known.
  values = np.asarray(x, dtype=np.float64)
  if np.isnan(values).any():
    raise ValueError(f"x contains {np.isnan(values).sum()} NaN values.")
  low, high = values.min(), values.max()
  if low < 0 or high > 1:
    raise ValueError(
        f"x must lie in [0, 1], got values in [{low}, {high}]; scale 8-bit "
        f"images with x = image / 255."
    )
  if q is not None:
    error = np.abs(values - np.round(values * q) / q)
    off = error > _grid_tolerance(values, x.dtype)
    if off.any():
      raise ValueError(
          f"x is off the 1/{q} grid ({off.sum()} values, worst "
          f"{q * error.max():.3g} steps away). DSSN certificates only hold "
          f"for quantized inputs: quantize with x = round(x * {q}) / {q} "
          f"first (or set SmoothingSpec.q to the inputs' quantization)."
      )


def check_offsets(v, spec: SmoothingSpec) -> None:
  """Raises ValueError unless v is an integer offset vector in {0..L-1}."""
  if not jnp.issubdtype(v.dtype, jnp.integer):
    raise ValueError(f"offsets v must be integers, got dtype {v.dtype}.")
  if _is_concrete(v) and v.size:
    values = np.asarray(v)  # On the host: inside a trace jnp ops would stage.
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= spec.levels:
      raise ValueError(
          f"offsets v must lie in {{0, ..., L-1}} with L = {spec.levels} for "
          f"sigma={spec.sigma}, got values in [{low}, {high}]: they were made "
          f"for another sigma or q. Use make_offsets(seed, shape, "
          f"spec.levels)."
      )


def valid_rows(x, q: int | None = None) -> jax.Array:
  """(B,) bool: which rows of x are valid inputs, computed in the program.

  The traced counterpart of `check_inputs`: every value finite, in [0, 1]
  and, with q, on the grid. XLA cannot divide exactly, so the grid test
  compares x with r = a * fl(1/q) (itself within 1 ulp of the correctly
  rounded a/q) and accepts up to GRID_TOLERANCE_ULPS + 1 ulps: never
  stricter than the eager check, and still 2**14 times tighter than half a
  grid step for float32 at q = 255.
  """
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  values = x.astype(dtype)
  ok = jnp.isfinite(values) & (values >= 0) & (values <= 1)
  if q is not None:
    a = jnp.round(values * q)
    reference = a * np.asarray(1 / q, dtype)
    magnitude = jnp.maximum(values, reference)
    ulp = (
        (jnp.nextafter(magnitude, jnp.asarray(np.inf, dtype)) - magnitude)
        .astype(x.dtype)
        .astype(dtype)
    )
    ok &= jnp.abs(values - reference) <= (GRID_TOLERANCE_ULPS + 1) * ulp
  return jnp.all(ok.reshape(ok.shape[0], -1), axis=1)


def valid_offsets(v, levels: int) -> jax.Array:
  """Scalar bool, in the program: every offset lies in {0, ..., L-1}."""
  return jnp.all((v >= 0) & (v < levels))


def _check_logits(out, input_shape, batch: int) -> None:
  if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != batch:
    raise ValueError(
        f"apply_fn must map a batch (n, *{tuple(input_shape)}) to logits "
        f"(n, num_classes), one row per input; for a batch of {batch} it "
        f"returned shape {getattr(out, 'shape', out)}. Check that it does "
        f"not reduce or broadcast over the batch axis."
    )
  if out.shape[1] < 2:
    raise ValueError(
        f"A classifier needs at least 2 classes, apply_fn returns "
        f"{out.shape[1]} logit(s)."
    )


def _classifier_facts(apply_fn, params, input_shape) -> chunking.ForwardFacts:
  """`chunking.ForwardFacts` of apply_fn (traced once); checks its logits."""
  facts = chunking.classifier_facts(apply_fn, params, input_shape)
  _check_logits(facts.logits, input_shape, chunking.FACTS_BATCH)
  return facts


# ----------------------------------------------------------------------------
# The shared jitted vote-counting loop.
# ----------------------------------------------------------------------------


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
    _check_logits(logits, noisy.shape[2:], c * b)
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


@functools.partial(
    jax.jit,
    static_argnames=(
        "apply_fn",
        "make_noisy",
        "num_items",
        "chunk_size",
        "mesh",
        "grid_q",
        "offsets_levels",
    ),
)
def _vote_counts(
    params,
    x,
    row_ids,
    aux,
    *,
    apply_fn,
    make_noisy,
    num_items: int,
    chunk_size: int | None,
    mesh: Mesh | None,
    grid_q: int | None = None,
    offsets_levels: int | None = None,
):
  """Vote counts (B, C) over num_items noise items, on one device or a mesh.

  A row gets counts of -1 in every class (no certificate: `certify_from_counts`
  abstains on it) when its input is invalid (`valid_rows`), when the offsets
  are out of range, or when any of its samples' logits is not finite.

  Args:
    params: pytree passed to apply_fn(params, batch), or None for
      apply_fn(batch).
    x: (B, *shape) inputs.
    row_ids: (B,) int32 identity of each input, for per-input noise keys.
    aux: pytree of replicated noise arguments (offsets, PRNG key).
    apply_fn: the classifier (static, hashed by identity).
    make_noisy: (x_rows, row_ids, aux, item) -> noisy rows (static).
    num_items: number of noise items per input (L for DSSN, N for sampling).
    chunk_size: items per forward pass; None picks `default_chunk_size`
      (the public functions pass `chunking.auto_chunk_size`).
    mesh: device mesh or None for the default device.
    grid_q: inputs must lie on the 1/grid_q grid (None: only in [0, 1]).
    offsets_levels: aux holds offsets that must lie in {0..levels-1}.
  """
  counts = _vote_counts_and_failures(
      params,
      x,
      row_ids,
      aux,
      apply_fn=apply_fn,
      make_noisy=make_noisy,
      num_items=num_items,
      chunk_size=chunk_size,
      mesh=mesh,
  )
  ok = valid_rows(x, grid_q) & (counts[:, -1] == 0)
  if offsets_levels is not None:
    ok &= valid_offsets(aux, offsets_levels)
  return jnp.where(ok[:, None], counts[:, :-1], -1)


_COMPILE_ONLY = threading.local()


@contextlib.contextmanager
def compile_only():
  """Within this context, `dssn_counts` and `sample_counts` (and so
  `certify_randomized`) compile their program without running it and
  return placeholder counts: every vote for class 0. For moving compilation
  out of a timed region without computing a batch twice (the program is
  then in JAX's cache); the placeholders are never a certificate. Calls
  traced by the caller's jit or vmap are unaffected. Per thread.
  """
  _COMPILE_ONLY.active = True
  try:
    yield
  finally:
    _COMPILE_ONLY.active = False


def _counts(*args, **static) -> jax.Array:
  """`_vote_counts(*args, **static)`, or inside `compile_only` its
  compilation and placeholder counts of its shape. A traced call (inside
  the caller's jit or vmap) is part of the caller's program: it runs as
  usual."""
  traced = any(
      isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)
  )
  if traced or not getattr(_COMPILE_ONLY, "active", False):
    return _vote_counts(*args, **static)
  _vote_counts.lower(*args, **static).compile()
  shape = jax.eval_shape(functools.partial(_vote_counts, **static), *args)
  placeholder = np.zeros(shape.shape, shape.dtype)
  placeholder[:, 0] = static["num_items"]
  return jnp.asarray(placeholder)


def _vote_counts_and_failures(
    params,
    x,
    row_ids,
    aux,
    *,
    apply_fn,
    make_noisy,
    num_items,
    chunk_size,
    mesh,
):
  """`_accumulate_votes` over the mesh: (B, C + 1) counts and failures."""
  forward = chunking.bind(apply_fn, params)
  batch = x.shape[0]

  def local_counts(
      x, row_ids, aux, item_start, stride, items, chunk, varying=()
  ):
    noisy = lambda item: make_noisy(x, row_ids, aux, item)
    chunk = chunk or chunking.default_chunk_size(x.shape[0], items)
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
    return local_counts(x, row_ids, aux, 0, 1, num_items, chunk_size)

  axes = tuple(mesh.axis_names)
  devices = mesh.size
  if batch >= devices:
    # Split the batch; pad it to a multiple of the device count with zeros
    # (a valid grid input) whose counts are dropped.
    padded = math.ceil(batch / devices) * devices
    pad = [(0, padded - batch)] + [(0, 0)] * (x.ndim - 1)
    x_pad = jnp.pad(x, pad)
    ids_pad = jnp.pad(row_ids, (0, padded - batch))
    counts = jax.shard_map(
        lambda x, ids, aux: local_counts(
            x, ids, aux, 0, 1, num_items, chunk_size, axes
        ),
        mesh=mesh,
        in_specs=(P(axes), P(axes), P()),
        out_specs=P(axes),
    )(x_pad, ids_pad, aux)
    return counts[:batch]

  # Fewer inputs than devices: device d evaluates items d, d + n, d + 2n, ...
  items_per_device = math.ceil(num_items / devices)

  def split_items(x, ids, aux):
    device = jax.lax.axis_index(axes)
    counts = local_counts(
        x, ids, aux, device, devices, items_per_device, chunk_size, axes
    )
    return jax.lax.psum(counts, axes)

  return jax.shard_map(
      split_items, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P()
  )(x, row_ids, aux)


def _place(mesh: Mesh | None, x):
  """Puts x on the mesh, split along the batch when it divides evenly."""
  if mesh is None or not _is_concrete(x):
    return x
  axes = tuple(mesh.axis_names)
  spec = P(axes) if x.shape[0] % mesh.size == 0 else P()
  return jax.device_put(x, NamedSharding(mesh, spec))


def _replicate(mesh: Mesh | None, tree):
  if mesh is None:
    return tree
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda a: jax.device_put(a, sharding) if _is_concrete(a) else a, tree
  )


def _mesh_size(mesh: Mesh | None) -> int:
  return 1 if mesh is None else mesh.size


def make_mesh(devices=None) -> Mesh:
  """A one-axis ("data") mesh over the given devices (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), ("data",))


# ----------------------------------------------------------------------------
# Exact DSSN certification.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _dssn_sample(spec: SmoothingSpec):
  """make_noisy for DSSN: item k is the k-th deterministic sample."""

  def make_noisy(x, row_ids, v, k):
    del row_ids  # The same k for every row.
    return smoothing.dssn_noise(x, v, k, spec)

  return make_noisy


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
  args, static = _dssn_program(
      apply_fn, x, v, spec, params, chunk_size, mesh, spec.levels
  )
  return _counts(*args, **static)


def _dssn_program(apply_fn, x, v, spec, params, chunk_size, mesh, num_items):
  """Checks a `dssn_counts` call; returns the arguments and static arguments
  of its `_vote_counts` program (over the samples k < num_items)."""
  v = jnp.asarray(v) if isinstance(v, np.ndarray) else v
  check_offsets(v, spec)
  check_inputs(x, v.shape, q=spec.q)  # numpy x is checked before transfer.
  x = jnp.asarray(x) if isinstance(x, np.ndarray) else x
  _classifier_facts(apply_fn, params, v.shape)  # Checks the logits' shape.
  chunk_size = _check_chunk_size(chunk_size)
  if chunk_size is None:
    chunk_size = chunking.auto_chunk_size(
        apply_fn,
        params,
        v.shape,
        x.shape[0],
        spec.levels,
        devices=_mesh_size(mesh),
    )
  row_ids = jnp.zeros(x.shape[0], jnp.int32)  # DSSN noise is per sample k.
  args = (
      _replicate(mesh, params),
      _place(mesh, x),
      _place(mesh, row_ids),
      _replicate(mesh, v),
  )
  static = dict(
      apply_fn=apply_fn,
      make_noisy=_dssn_sample(spec),
      num_items=num_items,
      chunk_size=chunk_size,
      mesh=mesh,
      grid_q=spec.q,
      offsets_levels=spec.levels,
  )
  return args, static


def _check_chunk_size(chunk_size):
  if chunk_size is not None and (
      isinstance(chunk_size, bool)
      or int(chunk_size) != chunk_size
      or chunk_size < 1
  ):
    raise ValueError(
        f"chunk_size must be a positive integer or None, got "
        f"{chunk_size!r}."
    )
  return None if chunk_size is None else int(chunk_size)


def failed_rows_message(rows) -> str:
  """The error for rows of counts of -1 computed from checked inputs."""
  return (
      f"apply_fn returned logits that are not finite (NaN or inf) on "
      f"noisy copies of the inputs at rows {list(rows)[:10]}: no vote "
      f"and no certificate for them. A classifier must give finite "
      f"logits on every input in [0, 1]."
  )


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
):
  """The jitted program of `dssn_counts`, lowered but neither compiled nor run.

  For tools that inspect or time the certifier (its HLO, XLA's cost and
  memory analysis) without depending on its private functions.

  Args:
    apply_fn, x, v, spec, params, chunk_size, mesh: as in `dssn_counts`.
    num_items: evaluate only the noise samples k < num_items (default L, the
      whole certification); a prefix is the same scan body run fewer times.

  Returns:
    (lowered, args): a `jax.stages.Lowered`; `lowered.compile()(*args)` gives
    the (B, C) int32 counts over the samples k < num_items.
  """
  num_items = spec.levels if num_items is None else num_items
  if not 1 <= num_items <= spec.levels:
    raise ValueError(
        f"num_items must be in 1..{spec.levels}, got " f"{num_items}."
    )
  args, static = _dssn_program(
      apply_fn, x, v, spec, params, chunk_size, mesh, num_items
  )
  return _vote_counts.lower(*args, **static), args


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
  if _is_concrete(counts):
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
  if not _is_concrete(counts):
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


# ----------------------------------------------------------------------------
# Randomized certification (Cohen et al. 2019) for the baselines.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _random_sample(kind: str, spec: SmoothingSpec):
  """make_noisy for sampling: item j of row i uses key fold_in(key, j, i)."""

  def make_noisy(x, row_ids, key, item):
    item_key = jax.random.fold_in(key, item)
    return jax.vmap(
        lambda xi, i: smoothing.random_noise(
            kind, jax.random.fold_in(item_key, i), xi[None], spec
        )[0]
    )(x, row_ids)

  return make_noisy


def sample_counts(
    apply_fn,
    x,
    spec: SmoothingSpec,
    key: jax.Array,
    *,
    noise: str,
    num_samples: int,
    params: Any = None,
    row_ids=None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
) -> jax.Array:
  """Votes of the base classifier under num_samples fresh noise draws.

  Noise for sample j of input i derives from `fold_in(fold_in(key, j),
  row_ids[i])`, so counts are the same for any chunk size and mesh, and, with
  row_ids naming the inputs (e.g. dataset indices), for any batching.

  Args:
    apply_fn, params, chunk_size, mesh: as in `dssn_counts`.
    x: (B, *shape) inputs in [0, 1].
    spec: the smoothing spec (noise half-width lam).
    key: PRNG key; use a different key per batch.
    noise: "uniform" or "ssn".
    num_samples: number of noise draws per input.
    row_ids: (B,) int identity of each input; default its batch position.

  Returns:
    (B, C) int32 counts; each row sums to num_samples. As in `dssn_counts`,
    invalid inputs raise eagerly, and give rows of -1 under jit or vmap, as
    non-finite logits do in both modes.
  """
  if noise not in RANDOMIZED_NOISE_KINDS:
    raise ValueError(
        f"Unknown randomized noise {noise!r}; expected one of "
        f"{RANDOMIZED_NOISE_KINDS}."
    )
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  check_inputs(x, x.shape[1:])
  x = jnp.asarray(x) if isinstance(x, np.ndarray) else x
  _classifier_facts(apply_fn, params, x.shape[1:])  # Checks the logits.
  chunk_size = _check_chunk_size(chunk_size)
  if chunk_size is None:
    chunk_size = chunking.auto_chunk_size(
        apply_fn,
        params,
        x.shape[1:],
        x.shape[0],
        num_samples,
        devices=_mesh_size(mesh),
    )
  if row_ids is None:
    row_ids = jnp.arange(x.shape[0], dtype=jnp.int32)
  row_ids = jnp.asarray(row_ids, jnp.int32)
  if row_ids.shape != x.shape[:1]:
    raise ValueError(
        f"row_ids must have shape ({x.shape[0]},), got " f"{row_ids.shape}."
    )
  counts = _counts(
      _replicate(mesh, params),
      _place(mesh, x),
      _place(mesh, row_ids),
      _replicate(mesh, key),
      apply_fn=apply_fn,
      make_noisy=_random_sample(noise, spec),
      num_items=num_samples,
      chunk_size=chunk_size,
      mesh=mesh,
  )
  return counts


@dataclasses.dataclass(frozen=True)
class RandomizedCertificate:
  """Per-input result of randomized certification (numpy arrays, (B,)).

  Attributes:
    pred: predicted class, -1 where the smoothed classifier abstains.
    p_lower: Clopper-Pearson lower bound on the top class probability.
    radius: `2 * lam * (p_lower - 0.5)` in l1 units (negative on abstention).
    count_top: votes for the selected class among the estimation samples.
  """

  pred: np.ndarray
  p_lower: np.ndarray
  radius: np.ndarray
  count_top: np.ndarray


def certify_randomized(
    apply_fn,
    x,
    spec: SmoothingSpec,
    key: jax.Array,
    *,
    noise: str,
    n0: int = 64,
    n: int = 100_000,
    alpha: float = 0.001,
    params: Any = None,
    row_ids=None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
) -> RandomizedCertificate:
  """Randomized l1 certificate (Cohen et al. 2019 with Yang et al.'s radius).

  n0 samples select the class A, n fresh samples count it; the radius is
  `2 * lam * (p_lower - 0.5)`, abstaining when p_lower <= 0.5.

  Args:
    apply_fn, x, spec, params, row_ids, chunk_size, mesh: as in
      `sample_counts`.
    key: PRNG key (use a different one per batch unless row_ids name the
      inputs).
    noise: "uniform" (additive) or "ssn" (independent splits).
    n0: selection samples.
    n: estimation samples.
    alpha: failure probability of the bound.

  Returns:
    A RandomizedCertificate.

  Raises:
    ValueError: also when called under jit or vmap: the Clopper-Pearson bound
      is computed on the host (scipy). Trace `sample_counts` instead and
      apply `clopper_pearson_lower` to its counts outside the trace.
  """
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
  leaves = [x, key, row_ids] + jax.tree.leaves(params)
  if not all(_is_concrete(a) for a in leaves if a is not None):
    raise ValueError(
        "certify_randomized cannot run under jax.jit or jax.vmap: its "
        "Clopper-Pearson bound is computed on the host with scipy. Call it "
        "outside the trace, or jit sample_counts (selection and estimation "
        "counts) and apply clopper_pearson_lower to them on the host."
    )
  select_key, estimate_key = jax.random.split(key)
  common = dict(
      noise=noise,
      params=params,
      row_ids=row_ids,
      chunk_size=chunk_size,
      mesh=mesh,
  )
  selection = sample_counts(
      apply_fn, x, spec, select_key, num_samples=n0, **common
  )
  estimation = sample_counts(
      apply_fn, x, spec, estimate_key, num_samples=n, **common
  )
  selection, estimation = np.asarray(selection), np.asarray(estimation)
  failed = np.flatnonzero((selection[:, 0] < 0) | (estimation[:, 0] < 0))
  if failed.size:
    raise ValueError(failed_rows_message(failed.tolist()))
  top = np.argmax(selection, axis=1)
  count_top = np.take_along_axis(estimation, top[:, None], 1)[:, 0]
  p_lower = clopper_pearson_lower(count_top, n, alpha)
  radius = 2 * spec.lam * (p_lower - 0.5)
  pred = np.where(p_lower > 0.5, top, -1).astype(np.int32)
  return RandomizedCertificate(pred, p_lower, radius, count_top)
