"""Anytime-valid sequential certification for the randomized baselines.

Fixed-N certification (`randomized.certify_randomized`) draws n = 100,000
counting samples for every input, even when a few hundred settle the answer
at the radii a user asks for. Here the counting draws come in rounds: after
n_1 < n_2 < ... < n_J = N_max draws (a fixed geometric schedule, `looks`)
the count k of the selected class A is tested, and the input stops as soon
as its answer at every requested radius is decided.

Validity (design.md, section 7): look j uses the two-sided Clopper-Pearson
interval at level alpha / J. For any p, the probability that some look's
interval misses p is at most the sum over looks, alpha; so at whatever look
the data make an input stop, its lower bound holds with probability at
least 1 - alpha, the guarantee of the fixed-N certificate. The selection
draws are those of the fixed-N run and the counting draws its first n_j, so
at N_max = n the two runs see the same samples.

Everything the tests need at a look is an integer threshold on k, computed
once on the host (`SequentialPlan`); deciding is integer comparisons, so
it runs under `jax.jit` too (`decide`).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from dssn_jax.core.clopper_pearson import beta_quantile

DEFAULT_N_MAX = 100_000
DEFAULT_FIRST_LOOK = 100


def looks(first: int, n_max: int) -> np.ndarray:
  """The fixed schedule: first, 2 first, 4 first, ... below n_max, n_max."""
  if not 1 <= first <= n_max:
    raise ValueError(f"need 1 <= first look <= n_max, got {first}, {n_max}.")
  out = []
  n = first
  while n < n_max:
    out.append(n)
    n *= 2
  out.append(n_max)
  return np.asarray(out, np.int64)


def cp_lower(k, n, level):
  """Two-sided Clopper-Pearson lower end at level `level` (0 at k = 0)."""
  k = np.asarray(k)
  bound = beta_quantile(level / 2, np.maximum(k, 1), n - k + 1)
  return np.where(k == 0, 0.0, bound)


def cp_upper(k, n, level):
  """Two-sided Clopper-Pearson upper end at level `level` (1 at k = n)."""
  k = np.asarray(k)
  bound = beta_quantile(1 - level / 2, k + 1, np.maximum(n - k, 1))
  return np.where(k == n, 1.0, bound)


@dataclasses.dataclass(frozen=True)
class SequentialPlan:
  """The schedule and the integer tests of a sequential certification.

  Attributes:
    looks: (J,) counting draws at each look.
    alpha: total error budget; each look gets alpha / J.
    radii: (K,) requested l1 radii.
    lam: the noise half-width (radius = 2 lam (p_lower - 1/2)).
    certify_at: (J, K) smallest k whose lower bound certifies radii[r] at
      look j (n_j + 1 where none does).
    refuse_at: (J, K) largest k whose upper bound is below the probability
      radii[r] needs (-1 where none is): no true p that certifies lies in
      the interval.
  """

  looks: np.ndarray
  alpha: float
  radii: np.ndarray
  lam: float
  certify_at: np.ndarray
  refuse_at: np.ndarray

  @property
  def level(self) -> float:
    """The error budget of one look."""
    return self.alpha / len(self.looks)


def plan(
    radii: Sequence[float],
    lam: float,
    *,
    alpha: float = 0.001,
    n_max: int = DEFAULT_N_MAX,
    first_look: int = DEFAULT_FIRST_LOOK,
) -> SequentialPlan:
  """The `SequentialPlan` of requested radii (0: "does it abstain?").

  Radius r is certified at a look when p_lower > 1/2 and
  2 lam (p_lower - 1/2) >= r, exactly the fixed-N rule, with the look's
  bound; refused when the upper bound is below 1/2 + r / (2 lam) (or at
  most 1/2 for r = 0).
  """
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
  radii = np.asarray(radii, np.float64).reshape(-1)
  if not radii.size or (radii < 0).any() or not np.isfinite(radii).all():
    raise ValueError(f"radii must be finite and >= 0, got {radii}.")
  # Seconds of scipy at N_max = 100,000: once per run, not per batch.
  return _plan(tuple(radii.tolist()), float(lam), alpha, n_max, first_look)


@functools.lru_cache(maxsize=32)
def _plan(radii, lam, alpha, n_max, first_look) -> SequentialPlan:
  radii = np.asarray(radii, np.float64)
  schedule = looks(first_look, n_max)
  level = alpha / len(schedule)
  certify_at = np.empty((len(schedule), radii.size), np.int64)
  refuse_at = np.empty_like(certify_at)
  for j, n in enumerate(schedule):
    k = np.arange(n + 1)
    lower = cp_lower(k, n, level)
    upper = cp_upper(k, n, level)
    for i, r in enumerate(radii):
      # The fixed-N rule, evaluated as randomized.certify_randomized does.
      ok = (lower > 0.5) & (2 * lam * (lower - 0.5) >= r)
      certify_at[j, i] = k[ok].min() if ok.any() else n + 1
      need = 0.5 + r / (2 * lam)
      no = (upper <= 0.5) if r == 0 else (upper < need)
      refuse_at[j, i] = k[no].max() if no.any() else -1
  return SequentialPlan(schedule, alpha, radii, lam, certify_at, refuse_at)


class Verdict(NamedTuple):
  """Per input (arrays; (B,) or (B, K)).

  Attributes:
    decided: (B,) bool, every requested radius certified or refused.
    certified: (B, K) bool, certified at this look.
    refused: (B, K) bool.
  """

  decided: object
  certified: object
  refused: object


def decide(plan_: SequentialPlan, look, count_top) -> Verdict:
  """The tests at look index `look` (B,) of counts `count_top` (B,).

  Integer comparisons only: numpy, or jax arrays under jit. At the last
  look every radius is decided (not certified means refused).
  """
  xp = np if isinstance(count_top, np.ndarray) else jnp
  look = xp.asarray(look)
  cert_at = xp.asarray(plan_.certify_at)[look]  # (B, K)
  ref_at = xp.asarray(plan_.refuse_at)[look]
  k = xp.asarray(count_top)[:, None]
  certified = k >= cert_at
  last = (look == len(plan_.looks) - 1)[:, None]
  refused = ~certified & ((k <= ref_at) | last)
  return Verdict(xp.all(certified | refused, axis=1), certified, refused)


def radius(plan_: SequentialPlan, look, count_top) -> np.ndarray:
  """2 lam (p_lower - 1/2) at the look's level: the radius the stopped
  run can claim (negative: abstain)."""
  n = plan_.looks[np.asarray(look)]
  return 2 * plan_.lam * (cp_lower(count_top, n, plan_.level) - 0.5)
