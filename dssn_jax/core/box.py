"""Top-2 and box-constrained l1 certificates for uniform and SSN noise.

The derivations are in docs/design.md, section 6 (after Voracek & Hein,
ICML 2023). For uniform noise x + U(-lam, lam)^d and for splitting noise with
independent splits (SSN, s_i ~ U(0, 2 lam)), the noisy inputs of x and
x + delta can be coupled to agree with probability

    ov(delta) = prod_i max(0, 1 - |delta_i| / (2 lam)),

so with p_a <= P(A) and p_b >= max_{y != A} P(y) the prediction A survives
every delta with ov(delta) > t = 1 - (p_a - p_b) / 2. The top-2 radius is
the smallest ||delta||_1 that reaches ov = t over all of R^d; the box radius
the smallest one among the delta that keep x + delta in [0, 1]^d. Both
certify the open ball ||delta||_1 < radius (Cohen et al.'s convention, also
that of the Yang et al. radius of `randomized.py`).

Bounds (`joint_bounds`): p_a is the lower and p_b the upper end of the
two-sided Clopper-Pearson interval at level alpha, i.e. each a one-sided
bound at alpha / 2, so both hold together with probability >= 1 - alpha
(Bonferroni). p_a is then exactly the p_lower of the Yang et al. certificate
at the same alpha, and p_b is capped at 1 - p_a, so the top-2 radius is never
below 2 lam (p_lower - 1/2).

Everything here is NumPy (float64) except `overlap`, `top2_radius` and
`box_radius`, which also take jax arrays and trace under jit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from dssn_jax.core.clopper_pearson import clopper_pearson_lower


def _xp(*arrays):
  """numpy for host values, jax.numpy as soon as one argument is a jax one."""
  if any(isinstance(a, jnp.ndarray) for a in arrays):
    return jnp
  return np


def _is_concrete(*arrays) -> bool:
  return _xp(*arrays) is np


def clopper_pearson_upper(successes, trials: int, alpha: float) -> np.ndarray:
  """Upper end of the two-sided Clopper-Pearson interval at level alpha.

  `Beta(1 - alpha/2; k + 1, n - k)`, 1 when k = n (float64), computed as
  `1 - clopper_pearson_lower(n - k, n, alpha)` (the Beta quantile symmetry).
  """
  successes = np.asarray(successes)
  return 1.0 - clopper_pearson_lower(trials - successes, trials, alpha)


def top_two_counts(counts, pred) -> tuple[np.ndarray, np.ndarray]:
  """The count of the selected class and the largest count of the others.

  Args:
    counts: (B, K) int counts of the n estimation samples.
    pred: (B,) int class selected from the n0 selection samples (the class
      whose probability is bounded from below; it need not have the largest
      count among the n samples).

  Returns:
    (count_a, count_b): (B,) int64 each; count_b is 0 when K = 1.
  """
  counts = np.asarray(counts, np.int64)
  pred = np.asarray(pred, np.int64)
  if counts.ndim != 2 or pred.shape != counts.shape[:1]:
    raise ValueError(
        f"counts must be (B, K) and pred (B,), got {counts.shape} and "
        f"{pred.shape}."
    )
  if np.any((pred < 0) | (pred >= counts.shape[1])):
    raise ValueError(f"pred must be in 0..{counts.shape[1] - 1}.")
  rows = np.arange(counts.shape[0])
  count_a = counts[rows, pred]
  others = counts.copy()
  others[rows, pred] = -1
  count_b = np.maximum(others.max(axis=1, initial=-1), 0)
  return count_a, count_b


def joint_bounds(
    count_a, count_b, n: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
  """Bounds on P(A) and max_{y != A} P(y) that hold jointly at level alpha.

  Valid when A was selected without looking at these n samples (from the n0
  selection samples) and count_b is the largest count among the classes
  other than A: the upper bound is increasing in the count, so it bounds
  the probability of the (unknown, fixed) most likely other class y* as soon
  as it bounds P(y*) from y*'s own count (docs/design.md, section 6).

  Args:
    count_a: (B,) count of A among the n samples.
    count_b: (B,) largest count of another class among the same samples.
    n: number of estimation samples.
    alpha: total failure probability, split alpha / 2 + alpha / 2.

  Returns:
    (p_a_lower, p_b_upper): (B,) float64; p_b_upper <= 1 - p_a_lower.
  """
  count_a = np.asarray(count_a, np.int64)
  count_b = np.asarray(count_b, np.int64)
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
  if (
      np.any(count_a < 0)
      or np.any(count_b < 0)
      or np.any(count_a + count_b > n)
  ):
    raise ValueError(f"counts must be >= 0 with count_a + count_b <= n = {n}.")
  p_a_lower = clopper_pearson_lower(count_a, n, alpha)
  # On the event p_a_lower <= P(A), every other class has P(y) <= 1 - P(A):
  # the cap costs no probability and makes top-2 >= Yang et al. always.
  p_b_upper = np.minimum(
      clopper_pearson_upper(count_b, n, alpha), 1.0 - p_a_lower
  )
  return p_a_lower, p_b_upper


def _check_bounds(p_a, p_b, lam):
  if not (np.isfinite(lam) and lam > 0):
    raise ValueError(f"lam must be finite and positive, got {lam}.")
  if _is_concrete(p_a, p_b):
    p_a, p_b = np.asarray(p_a), np.asarray(p_b)
    if not (
        np.all((p_a >= 0) & (p_a <= 1)) and np.all((p_b >= 0) & (p_b <= 1))
    ):
      raise ValueError("p_a_lower and p_b_upper must lie in [0, 1].")


def overlap(delta, lam: float):
  """ov(delta) = prod_i max(0, 1 - |delta_i| / (2 lam)) over the last axis.

  For uniform noise the fraction of the noise box of x that the box of
  x + delta covers (the two noisy inputs agree with this probability under a
  maximal coupling); for SSN the probability that the same splits give x and
  x + delta the same noisy input (both in [0, 1]^d).
  """
  xp = _xp(delta)
  delta = xp.asarray(delta)
  return xp.prod(xp.clip(1 - xp.abs(delta) / (2 * lam), 0, 1), axis=-1)


def top2_radius(p_a_lower, p_b_upper, lam: float):
  """l1 radius `lam * (p_a - p_b)` without the box; 0 on abstention.

  Worst case of ov(delta) > 1 - (p_a - p_b) / 2 at fixed ||delta||_1: all of
  delta in one coordinate (log(1 - a / (2 lam)) is concave). Abstains
  (radius 0) when p_a_lower <= p_b_upper.

  Args:
    p_a_lower: (...) lower bound of P(A).
    p_b_upper: (...) upper bound of max_{y != A} P(y).
    lam: noise half-width lambda (sigma * sqrt(3)).

  Returns:
    (...) radius in l1 input units, >= 0.
  """
  _check_bounds(p_a_lower, p_b_upper, lam)
  xp = _xp(p_a_lower, p_b_upper)
  gap = xp.asarray(p_a_lower) - xp.asarray(p_b_upper)
  return xp.where(gap > 0, lam * gap, 0.0)


def box_radius(x, p_a_lower, p_b_upper, lam: float):
  """l1 radius within [0, 1]^d given the input x; 0 on abstention.

  Coordinate i can move by at most b_i = max(x_i, 1 - x_i). With b sorted in
  decreasing order, P_k = prod_{j<k} (1 - b_j / (2 lam)) and S_k =
  sum_{j<k} b_j, the worst delta of l1 norm r fills b_1, b_2, ... in turn,
  so the radius is `S_k + 2 lam (1 - t / P_k)` for the first k with
  P_{k+1} <= t, t = 1 - (p_a - p_b) / 2; it is +inf when no k binds (every
  point of the box keeps A). Equals `top2_radius` when
  2 lam (1 - t) <= b_1, is never below it.

  Args:
    x: the input, (..., *input_shape) with values in [0, 1]; its leading
      dimensions are those of the bounds.
    p_a_lower: (...) lower bound of P(A).
    p_b_upper: (...) upper bound of max_{y != A} P(y).
    lam: noise half-width lambda.

  Returns:
    (...) radius in l1 input units, >= 0, possibly +inf.
  """
  _check_bounds(p_a_lower, p_b_upper, lam)
  xp = _xp(x, p_a_lower, p_b_upper)
  p_a, p_b = xp.asarray(p_a_lower), xp.asarray(p_b_upper)
  batch = xp.broadcast_shapes(p_a.shape, p_b.shape)
  x = xp.asarray(x)
  if xp is np and not np.all((x >= 0) & (x <= 1)):
    raise ValueError("box_radius needs inputs in [0, 1] (no NaN).")
  if x.shape[: len(batch)] != batch:
    raise ValueError(
        f"x must start with the bounds' shape {batch}, got {x.shape}."
    )
  reach = xp.maximum(x, 1 - x).reshape(batch + (-1,))
  reach = -xp.sort(-reach, axis=-1)  # b_1 >= b_2 >= ...
  width = 2 * lam
  t = (1 - (p_a - p_b) / 2)[..., None]
  factors = xp.clip(1 - reach / width, 0, 1)
  after = xp.cumprod(factors, axis=-1)  # P_{k+1}
  before = xp.concatenate([xp.ones_like(after[..., :1]), after[..., :-1]], -1)
  spent = xp.cumsum(reach, axis=-1) - reach  # S_k
  binds = after <= t
  # P_k > t >= 1/2 at the first binding k; elsewhere the value is unused.
  safe = xp.where(before > 0, before, 1)
  candidates = spent + width * (1 - t / safe)
  first = xp.argmax(binds, axis=-1)[..., None]
  radius = xp.take_along_axis(candidates, first, axis=-1)[..., 0]
  radius = xp.where(binds.any(axis=-1), radius, xp.inf)
  return xp.where(p_a > p_b, radius, 0.0)


class BoxCertificate(NamedTuple):
  """Top-2 and box-constrained certificates of a batch (all (B,)).

  pred: the selected class, -1 where p_a_lower <= p_b_upper (abstain).
  p_a_lower, p_b_upper: the joint bounds (float64).
  radius_top2: `top2_radius`, 0 on abstention.
  radius_box: `box_radius`, 0 on abstention, +inf where the whole box keeps
    the prediction.
  """

  pred: np.ndarray
  p_a_lower: np.ndarray
  p_b_upper: np.ndarray
  radius_top2: np.ndarray
  radius_box: np.ndarray


def certify_box(
    counts, pred, x, *, n: int, alpha: float, lam: float
) -> BoxCertificate:
  """Top-2 and box-constrained certificates from estimation counts.

  Args:
    counts: (B, K) counts of the n estimation samples (uniform or SSN).
    pred: (B,) class selected from the n0 selection samples.
    x: (B, *input_shape) the inputs, in [0, 1].
    n: number of estimation samples (each row of counts sums to at most n).
    alpha: joint failure probability of the two bounds.
    lam: noise half-width lambda.

  Returns:
    a `BoxCertificate`.
  """
  count_a, count_b = top_two_counts(counts, pred)
  p_a, p_b = joint_bounds(count_a, count_b, n, alpha)
  certified = p_a > p_b
  return BoxCertificate(
      pred=np.where(certified, np.asarray(pred), -1),
      p_a_lower=p_a,
      p_b_upper=p_b,
      radius_top2=top2_radius(p_a, p_b, lam),
      radius_box=box_radius(x, p_a, p_b, lam),
  )
