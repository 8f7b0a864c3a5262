"""Sequential uniform and SSN certification, packed across inputs.

`sequential_certify` selects each input's class with the n0 draws of the
fixed-N run and counts it with that run's counting draws, in rounds up to
N_max, stopping the input when `sequential.decide` settles every requested
radius (design.md, section 7). The draws of all unfinished inputs share
every forward pass (`packing.py`); draw j of input i is the fixed-N run's
(`randomized.sample_counts`: `fold_in(fold_in(key, j), row_id)` with the
selection and counting keys of `randomized.certify_randomized`).
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
from dssn_jax.core import inputs
from dssn_jax.core import packing
from dssn_jax.core import placement
from dssn_jax.core import randomized
from dssn_jax.core import sequential
from dssn_jax.core import smoothing
from dssn_jax.core.methods import RANDOMIZED_NOISE_KINDS
from dssn_jax.core.smoothing import SmoothingSpec


@functools.cache
def _draw(kind: str, spec: SmoothingSpec):
  """Packed make_noisy: draw j of group g (0 selection, 1 counting)."""

  def make_noisy(x_row, row_id, keys, group, j):
    key = jax.random.fold_in(jax.random.fold_in(keys[group], j), row_id)
    return smoothing.random_noise(kind, key, x_row[None], spec)[0]

  return make_noisy


def packed_program(apply_fn, noise: str, spec: SmoothingSpec, mesh=None):
  """The `packing.PackedProgram` of the randomized draws (2 groups)."""
  if noise not in RANDOMIZED_NOISE_KINDS:
    raise ValueError(
        f"Unknown randomized noise {noise!r}; expected one of "
        f"{RANDOMIZED_NOISE_KINDS}."
    )
  return packing.PackedProgram(apply_fn, _draw(noise, spec), 2, mesh)


def keys_of(key):
  """(2,) keys: the selection and counting keys of `certify_randomized`."""
  return jnp.stack(randomized._split_key(key))  # pylint: disable=protected-access


@dataclasses.dataclass
class SequentialCertificate:
  """Per input (numpy, N inputs, K requested radii).

  Attributes:
    plan: the `sequential.SequentialPlan` (looks, alpha, radii).
    pred: (N,) selected class, -1 where p_lower <= 1/2 at the stop or the
      input failed (non-finite logits).
    certified: (N, K) bool.
    samples: (N,) counting draws the answers rest on.
    count_top: (N,) votes for the selected class among them.
    p_lower: (N,) the lower bound at the stopping look (level alpha / J).
    evaluated: (N,) draws evaluated (selection included, and the step
      dispatched before the decision was read).
    passes, slots: forward passes run, draws per pass.
  """

  plan: sequential.SequentialPlan
  pred: np.ndarray
  certified: np.ndarray
  samples: np.ndarray
  count_top: np.ndarray
  p_lower: np.ndarray
  evaluated: np.ndarray
  passes: int
  slots: int


def sequential_certify(
    apply_fn: Callable[..., jax.Array],
    x,
    spec: SmoothingSpec,
    key: jax.Array,
    radii: Sequence[float],
    *,
    noise: str,
    n0: int = 64,
    n_max: int = sequential.DEFAULT_N_MAX,
    first_look: int = sequential.DEFAULT_FIRST_LOOK,
    alpha: float = 0.001,
    params: Any = None,
    row_ids=None,
    slots: int | None = None,
    pool_size: int | None = None,
    mesh: Mesh | None = None,
) -> SequentialCertificate:
  """Certificates at the requested radii with as few draws as decide them.

  Args:
    apply_fn, x, spec, key, noise, n0, alpha, params, row_ids, mesh: as in
      `randomized.certify_randomized` (x concrete; host loop).
    radii: requested l1 radii (0 asks only whether it abstains).
    n_max: most counting draws per input (the fixed-N run's n).
    first_look: counting draws at the first look; then doubling.
    slots: draws per forward pass; default
      `chunking.default_forward_batch()` times the mesh size.
    pool_size: inputs on the device at once; default slots // 8 + 8.
  """
  x = np.asarray(x)
  inputs.check_inputs(x, x.shape[1:])
  inputs.check_classifier(apply_fn, params, tuple(x.shape[1:]))
  the_plan = sequential.plan(
      radii, spec.lam, alpha=alpha, n_max=n_max, first_look=first_look
  )
  row_ids = randomized._row_ids(row_ids, x.shape[0])  # pylint: disable=protected-access
  devices = placement.mesh_size(mesh)
  if slots is None:
    slots = chunking.default_forward_batch() * devices
  slots = -(-slots // devices) * devices
  pool_size = pool_size or slots // 8 + 8
  look_items = n0 + the_plan.looks

  def decide(counts, used):
    top = np.argmax(counts[:, 0], axis=1)
    k = np.take_along_axis(counts[:, 1], top[:, None], 1)[:, 0]
    look = np.searchsorted(the_plan.looks, used - n0)
    return sequential.decide(the_plan, look, k).decided

  keys = keys_of(key)
  if mesh is not None:
    params, keys = packing.replicate(mesh, (params, keys))
  result = packing.run_packed(
      packed_program(apply_fn, noise, spec, mesh),
      params,
      keys,
      x,
      np.asarray(row_ids),
      packing.ItemLayout((0, n0), n0 + n_max),
      decide,
      slots=slots,
      pool_size=pool_size,
      looks=look_items,
  )
  failed = result.counts[:, 0, 0] < 0
  top = np.argmax(result.counts[:, 0], axis=1)
  k = np.take_along_axis(result.counts[:, 1], top[:, None], 1)[:, 0]
  samples = np.maximum(result.used - n0, 0)  # 0: failed in selection.
  look = np.searchsorted(the_plan.looks, samples).clip(
      max=len(the_plan.looks) - 1
  )
  verdict = sequential.decide(the_plan, look, np.maximum(k, 0))
  p_lower = np.where(
      failed,
      0.0,
      sequential.cp_lower(np.maximum(k, 0), samples, the_plan.level),
  )
  pred = np.where((p_lower > 0.5) & ~failed, top, -1).astype(np.int32)
  certified = verdict.certified & ~failed[:, None]
  return SequentialCertificate(
      the_plan,
      pred,
      certified,
      samples,
      k,
      p_lower,
      result.evaluated,
      result.passes,
      slots,
  )
