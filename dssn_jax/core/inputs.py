"""What the certifiers accept: inputs, offsets, classifiers and chunk sizes.

A certificate only holds for inputs on the 1/q grid in [0, 1], offsets in
{0, ..., L-1} and a classifier that maps a batch to one row of finite logits
per input. This module says which calls qualify, in two forms that must
agree:

- eagerly, on concrete arrays, a ValueError whose message says what is wrong
  and how to fix it (`check_inputs`, `check_offsets`, `check_classifier`,
  `check_chunk_size`);
- inside the program, where values are unknown at trace time (under the
  caller's jit or vmap), the same conditions as a per-row mask
  (`valid_rows`, `valid_offsets`): the vote program gives an invalid row
  counts of -1 instead of a certificate.

Shapes and dtypes are checked in both cases, and on abstract arguments
(`jax.ShapeDtypeStruct`, when a program is only lowered). No vote counting
here: `votes.py` runs the checked program.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dssn_jax.core import chunking
from dssn_jax.core.smoothing import SmoothingSpec

# Inputs within this many ulps of their dtype of a grid value a/q are on the
# grid: float rounding of a/q, however computed, is within 1.3 ulps.
GRID_TOLERANCE_ULPS = 2
# A dtype resolves the 1/q grid when a step spans at least this many ulps
# near 1 (float32: q <= 2**20; float16 and bfloat16 fail at q = 255).
MIN_ULPS_PER_STEP = 16


def has_values(x) -> bool:
  """Whether x's values are known here: not a tracer of the caller's jit or
  vmap, nor an abstract `jax.ShapeDtypeStruct` of a program being lowered."""
  return not isinstance(x, (jax.core.Tracer, jax.ShapeDtypeStruct))


def grid_tolerance(values: np.ndarray, dtype) -> np.ndarray:
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

  Shape and dtype are checked always; values only when x has them (under
  jit or vmap, `dssn_counts` masks invalid rows in the program instead).

  Args:
    x: (B, *input_shape) floating inputs.
    input_shape: the shape of one input.
    q: when given, x must also lie on the grid {0, 1/q, ..., 1}: within
      `GRID_TOLERANCE_ULPS` ulps of its dtype of a grid value a/q.
  """
  input_shape = tuple(input_shape)
  if len(x.shape) != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape:
    raise ValueError(
        f"x must have shape (batch, *{input_shape}) to match the offsets, got "
        f"{tuple(x.shape)}."
    )
  if x.shape[0] == 0:
    raise ValueError("x is an empty batch.")
  check_input_dtype(x.dtype, q)
  if not has_values(x):
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
    off = error > grid_tolerance(values, x.dtype)
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
  if has_values(v) and np.size(v):
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


def check_logits(out, input_shape, batch: int) -> None:
  """Raises ValueError unless out (a classifier's output for `batch` inputs
  of `input_shape`) is logits (batch, C) with C >= 2 (shapes only)."""
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


def check_classifier(
    apply_fn, params: Any, input_shape
) -> chunking.ForwardFacts:
  """`chunking.ForwardFacts` of apply_fn (traced once, on abstract inputs);
  raises ValueError unless it returns one row of logits per input."""
  facts = chunking.classifier_facts(apply_fn, params, input_shape)
  check_logits(facts.logits, input_shape, chunking.FACTS_BATCH)
  return facts


def check_chunk_size(chunk_size) -> int | None:
  """chunk_size as an int (None stays None: sized automatically); raises
  ValueError unless it is a positive integer."""
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
