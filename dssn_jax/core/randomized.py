"""Randomized certification (Cohen et al. 2019), the paper's baselines.

`sample_counts` runs the vote program (`votes.py`) with the j-th random
noise draw as item j ("uniform" additive noise, or "ssn", independent
splits; `smoothing.random_noise`); `certify_randomized` selects a class with
n0 draws, counts it with n fresh ones and bounds its probability with
Clopper-Pearson on the host. Unlike DSSN the certificate holds with
probability 1 - alpha only, which is why these are apart from `dssn.py`.
`sample_program` is the one place a sampling call is checked and its program
set up; `lower_sample_counts` and `lower_randomized` lower the programs
without running or placing anything.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from dssn_jax.core import chunking
from dssn_jax.core import inputs
from dssn_jax.core import placement
from dssn_jax.core import smoothing
from dssn_jax.core.clopper_pearson import clopper_pearson_lower
from dssn_jax.core.methods import RANDOMIZED_NOISE_KINDS
from dssn_jax.core.smoothing import SmoothingSpec
from dssn_jax.core.votes import VoteProgram


@functools.cache
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


def _row_ids(row_ids, batch: int):
  """row_ids as (B,) int32, numpy unless given as a jax array, a tracer or
  abstract (nothing is put on a device here)."""
  if row_ids is None:
    return np.arange(batch, dtype=np.int32)
  if isinstance(row_ids, jax.ShapeDtypeStruct):
    row_ids = jax.ShapeDtypeStruct(row_ids.shape, jnp.int32)
  elif isinstance(row_ids, jax.Array):
    row_ids = jnp.asarray(row_ids, jnp.int32)
  else:
    row_ids = np.asarray(row_ids, np.int32)
  if row_ids.shape != (batch,):
    raise ValueError(
        f"row_ids must have shape ({batch},), got {row_ids.shape}."
    )
  return row_ids


def sample_program(
    apply_fn,
    x,
    spec: SmoothingSpec,
    key,
    *,
    noise: str,
    num_samples: int,
    params: Any = None,
    row_ids=None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[VoteProgram, tuple[Any, ...]]:
  """Checks a `sample_counts` call; returns its program and arguments.

  Arguments as in `sample_counts`; x, key, row_ids and params may also be
  abstract (`jax.ShapeDtypeStruct`).

  Returns:
    (program, args): `program(*args)` runs the counts, `program.lower(*args)`
    lowers the program; args are (params, x, row_ids, key), with row_ids
    made (B,) int32 and nothing placed.
  """
  if noise not in RANDOMIZED_NOISE_KINDS:
    raise ValueError(
        f"Unknown randomized noise {noise!r}; expected one of "
        f"{RANDOMIZED_NOISE_KINDS}."
    )
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  input_shape = tuple(x.shape[1:])
  inputs.check_inputs(x, input_shape)
  inputs.check_classifier(apply_fn, params, input_shape)  # The logits.
  chunk_size = inputs.check_chunk_size(chunk_size)
  if chunk_size is None:
    chunk_size = chunking.auto_chunk_size(
        apply_fn,
        params,
        input_shape,
        x.shape[0],
        num_samples,
        devices=placement.mesh_size(mesh),
        device=placement.first_device(mesh),
    )
  program = VoteProgram(
      apply_fn=apply_fn,
      make_noisy=_random_sample(noise, spec),
      num_items=num_samples,
      chunk_size=chunk_size,
      mesh=mesh,
  )
  return program, (params, x, _row_ids(row_ids, x.shape[0]), key)


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
  program, args = sample_program(
      apply_fn,
      x,
      spec,
      key,
      noise=noise,
      num_samples=num_samples,
      params=params,
      row_ids=row_ids,
      chunk_size=chunk_size,
      mesh=mesh,
  )
  return program(*args)


def lower_sample_counts(apply_fn, x, spec, key, **kwargs) -> jax.stages.Lowered:
  """The program of `sample_counts(apply_fn, x, spec, key, **kwargs)`,
  lowered from the arguments' shapes and dtypes (concrete or
  `jax.ShapeDtypeStruct`): nothing runs or is placed (see
  `dssn.lower_counts`)."""
  program, args = sample_program(apply_fn, x, spec, key, **kwargs)
  return program.lower(*args)


@dataclasses.dataclass(frozen=True)
class RandomizedCertificate:
  """Per-input result of randomized certification (numpy arrays, (B,)).

  Attributes:
    pred: predicted class, -1 where the smoothed classifier abstains.
    p_lower: Clopper-Pearson lower bound on the top class probability.
    radius: `2 * lam * (p_lower - 0.5)` in l1 units (negative on abstention).
    count_top: votes for the selected class among the estimation samples.
    selected: the class selected from the n0 selection samples (also where
      the certifier abstains), int32; None if not recorded.
    counts: (B, C) int32 votes of every class among the n estimation
      samples (`count_top` is `counts[i, selected[i]]`), for the top-2 and
      box certificates of core/box.py (`box.certify_box`); None if not
      recorded.
  """

  pred: np.ndarray
  p_lower: np.ndarray
  radius: np.ndarray
  count_top: np.ndarray
  selected: np.ndarray | None = None
  counts: np.ndarray | None = None


@jax.jit
def _split_key(key):
  """(selection key, estimation key) of `certify_randomized`: one jitted
  program, so that it too can be compiled ahead of a call."""
  select_key, estimate_key = jax.random.split(key)
  return select_key, estimate_key


class RandomizedPrograms(NamedTuple):
  """The programs `certify_randomized` runs, lowered (`lower_randomized`)."""

  keys: jax.stages.Lowered  # The split of the key into the two below.
  selection: jax.stages.Lowered  # Votes over the n0 selection draws.
  estimation: jax.stages.Lowered  # Votes over the n estimation draws.


def lower_randomized(
    apply_fn,
    x,
    spec: SmoothingSpec,
    key,
    *,
    noise: str,
    n0: int = 64,
    n: int = 100_000,
    **kwargs,
) -> RandomizedPrograms:
  """The programs `certify_randomized` runs, lowered from the arguments'
  shapes and dtypes: nothing runs or is placed (see `dssn.lower_counts`);
  key may be abstract too (`jax.eval_shape(jax.random.key, 0)`). Compiling
  all three ahead of a call leaves the call nothing to compile. Other
  keyword arguments as in `certify_randomized`, alpha excepted."""
  key = jax.ShapeDtypeStruct(np.shape(key), key.dtype)
  sub_key = key  # `jax.random.split` gives keys of the type it splits.
  selection, estimation = (
      lower_sample_counts(
          apply_fn, x, spec, sub_key, noise=noise, num_samples=m, **kwargs
      )
      for m in (n0, n)
  )
  return RandomizedPrograms(_split_key.lower(key), selection, estimation)


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
  if not all(inputs.has_values(a) for a in leaves if a is not None):
    raise ValueError(
        "certify_randomized cannot run under jax.jit or jax.vmap: its "
        "Clopper-Pearson bound is computed on the host with scipy. Call it "
        "outside the trace, or jit sample_counts (selection and estimation "
        "counts) and apply clopper_pearson_lower to them on the host."
    )
  select_key, estimate_key = _split_key(key)
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
    raise ValueError(inputs.failed_rows_message(failed.tolist()))
  top = np.argmax(selection, axis=1)
  count_top = np.take_along_axis(estimation, top[:, None], 1)[:, 0]
  p_lower = clopper_pearson_lower(count_top, n, alpha)
  radius = 2 * spec.lam * (p_lower - 0.5)
  pred = np.where(p_lower > 0.5, top, -1).astype(np.int32)
  return RandomizedCertificate(
      pred,
      p_lower,
      radius,
      count_top,
      selected=top.astype(np.int32),
      counts=estimation,
  )
