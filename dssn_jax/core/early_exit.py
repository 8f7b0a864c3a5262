"""Exact early exit for DSSN: which answers the remaining splits can change.

After k of the L splits of an input have voted, the final counts are
c + d for some d >= 0 with sum(d) = R = L - k. The answers a user asks for
are the prediction A (most votes, lowest index among ties) and, for each
requested radius r, whether the final radius is >= r, i.e. whether
steps >= s_r (`radius_steps`). An answer is *determined* when it is the same
for every such d; an input whose answers are all determined can stop, and
its answers are those of the full enumeration (design.md, section 7, proves
the criteria below).

- Prediction: the leader A of c stays the leader for every d iff for every
  class Y != A, c[A] - c[Y] - R >= [Y < A] (all R votes to Y).
- Best case: the largest final gap (c[A] - c[B] - [B < A]) over all d is
  gap(c) + R (all votes to the leader).
- Worst case: whether some d makes the final gap <= G is decided exactly by
  `gap_can_reach`, over the pairs (a, b) that could end first and second.

All functions work on numpy or jax arrays and inside `jax.jit` (integer
arithmetic only); counts of -1 (an invalid row) are the caller's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

# Larger than any count; stands for "no such class" in maxima.
_NONE = -(2**30)


def radius_steps(radii: Sequence[float], q: int) -> np.ndarray:
  """Per radius r, the fewest grid steps s >= 0 with s / q >= r (float64).

  "Certified at r" is `radius >= r` with radius = steps / q in float64
  (`dssn.certify_from_counts`, `reports.tables`), so steps >= s_r is the
  same test in integers, rounding included. r <= 0 gives 0 (always true).

  Returns:
    (len(radii),) int64 thresholds.
  """
  out = []
  for r in np.asarray(radii, np.float64).reshape(-1):
    if not np.isfinite(r):
      raise ValueError(f"radii must be finite, got {r}.")
    s = max(int(np.ceil(r * q)), 0)
    while s > 0 and (s - 1) / q >= r:
      s -= 1
    while s / q < r:
      s += 1
    out.append(s)
  return np.asarray(out, np.int64)


def _xp(a):
  return np if isinstance(a, np.ndarray) else jnp


def leader_and_gap(counts):
  """(leader, gap) of (B, C) counts: the tie rule of `certify_from_counts`.

  gap = c[A] - c[B] - [B < A] >= 0 with B the runner-up (stable sort);
  equivalently min over Y != A of c[A] - c[Y] - [Y < A].
  """
  xp = _xp(counts)
  counts = counts.astype(xp.int32)
  num_classes = counts.shape[1]
  leader = xp.argmax(counts, axis=1)  # First index among ties.
  idx = xp.arange(num_classes)
  c_lead = xp.take_along_axis(counts, leader[:, None], axis=1)
  margins = c_lead - counts - (idx[None, :] < leader[:, None])
  margins = xp.where(idx[None, :] == leader[:, None], 2**30, margins)
  return leader.astype(xp.int32), xp.min(margins, axis=1).astype(xp.int32)


def prediction_fixed(counts, remaining):
  """(B,) bool: no way of casting `remaining` more votes changes the leader.

  Args:
    counts: (B, C) int counts so far.
    remaining: (B,) or scalar int, votes still to come (L - k).
  """
  xp = _xp(counts)
  counts = counts.astype(xp.int32)
  leader, _ = leader_and_gap(counts)
  idx = xp.arange(counts.shape[1])
  c_lead = xp.take_along_axis(counts, leader[:, None], axis=1)
  r = xp.asarray(remaining, xp.int32).reshape(-1, 1)
  safe = c_lead - counts - r >= (idx[None, :] < leader[:, None])
  safe = safe | (idx[None, :] == leader[:, None])
  return xp.all(safe, axis=1)


def gap_can_reach(counts, remaining, bound):
  """(B, K) bool: whether some completion ends with gap <= bound[:, j].

  A completion adds d >= 0 with sum(d) = remaining to the counts. The final
  gap is <= G iff some pair a != b has a winning (a beats every class by
  the tie rule) and c'[a] - c'[b] - [b < a] <= G. For a pair, with
  m = d[a] - d[b], that needs m in [t - base, G + t - base] (t = [b < a],
  base = c[a] - c[b]); the votes left over go to the other classes, each z
  taking at most cap_z = c[a] + d[a] - c[z] - [z < a] without beating a.
  The largest feasible d[a] = floor((R + m) / 2) is best for every other
  constraint, and only the parity of m matters beyond the largest m, so the
  two largest m of the interval decide (design.md, section 7).

  Args:
    counts: (B, C) int counts so far, C >= 2.
    remaining: (B,) or scalar int R >= 0.
    bound: (B, K) or (K,) int G >= 0.

  Returns:
    (B, K) bool.
  """
  xp = _xp(counts)
  c = counts.astype(xp.int32)
  batch, num_classes = c.shape
  r = xp.broadcast_to(xp.asarray(remaining, xp.int32).reshape(-1), (batch,))
  g = xp.asarray(bound, xp.int32)
  if g.ndim == 1:
    g = xp.broadcast_to(g[None, :], (batch, g.shape[0]))
  idx = xp.arange(num_classes)
  a_idx, b_idx = idx[:, None], idx[None, :]  # (C, C) pair grid (a, b).
  t = (b_idx < a_idx).astype(xp.int32)
  c_a, c_b = c[:, :, None], c[:, None, :]  # (B, C, 1), (B, 1, C).
  base = c_a - c_b
  # key[a, z] = c[z] + [z < a]: a needs c[a] + d[a] >= key for each other z.
  key = c[:, None, :] + t[None]
  key = xp.where((a_idx == b_idx)[None], _NONE, key)
  top1 = xp.max(key, axis=2)
  arg1 = xp.argmax(key, axis=2)
  second = xp.where(b_idx[None] == arg1[:, :, None], _NONE, key)
  top2 = xp.max(second, axis=2)
  # The largest c[z] + [z < a] over z not in {a, b}.
  excl = xp.where(
      b_idx[None] == arg1[:, :, None], top2[:, :, None], top1[:, :, None]
  )
  total = xp.sum(c, axis=1)[:, None, None]
  r3 = r[:, None, None, None]
  g4 = g[:, :, None, None]  # (B, K, 1, 1)
  base4, t4 = base[:, None], t[None, None]
  c_a4, c_b4 = c_a[:, None], c_b[:, None]
  m_lo = t4 - base4
  m_hi = xp.minimum(g4 + t4 - base4, r3)
  reach = xp.zeros(m_hi.shape, bool)
  for m in (m_hi, m_hi - 1):
    x = (r3 + m) // 2
    used = 2 * x - m
    others = (
        (num_classes - 2) * (c_a4 + x)
        - (total[:, None] - c_a4 - c_b4)
        - (a_idx[None, None] - t4)
    )
    ok = (m >= m_lo) & (r3 + m >= 0) & (used + others >= r3)
    ok &= c_a4 + x >= excl[:, None]
    reach = reach | ok
  reach = reach & (a_idx != b_idx)[None, None]
  return xp.any(reach, axis=(2, 3))


class Decision(NamedTuple):
  """What the counts so far settle (all (B,) or (B, K) arrays).

  Attributes:
    decided: (B,) bool, every answer is determined.
    pred: (B,) int32 current leader (the final prediction where
      pred_fixed).
    pred_fixed: (B,) bool.
    certified: (B, K) bool, steps >= s_k in every completion.
    refused: (B, K) bool, steps < s_k in every completion.
    steps_upper: (B,) int32 largest final steps of any completion.
  """

  decided: object
  pred: object
  pred_fixed: object
  certified: object
  refused: object
  steps_upper: object


def decide(counts, remaining, thresholds) -> Decision:
  """Which answers are determined after some splits (design.md, section 7).

  Args:
    counts: (B, C) int counts of the splits evaluated so far.
    remaining: (B,) or scalar int, splits not evaluated yet.
    thresholds: (K,) int steps thresholds s_k (`radius_steps`).

  Returns:
    A `Decision`. With remaining = 0 it states the full run's answers:
    certified[:, k] == (steps >= s_k), refused its negation.
  """
  xp = _xp(counts)
  counts = xp.asarray(counts).astype(xp.int32)
  s = xp.asarray(thresholds, xp.int32).reshape(-1)
  r = xp.broadcast_to(
      xp.asarray(remaining, xp.int32).reshape(-1), (counts.shape[0],)
  )
  pred, gap = leader_and_gap(counts)
  fixed = prediction_fixed(counts, r)
  best = (gap + r) // 2
  can_fail = gap_can_reach(counts, r, xp.maximum(2 * s - 1, 0)[None, :])
  can_fail = can_fail & (s[None, :] > 0)
  certified = ~can_fail
  refused = best[:, None] < s[None, :]
  decided = fixed & xp.all(certified | refused, axis=1)
  return Decision(decided, pred, fixed, certified, refused, best)
