"""Whether the box (or knowing x and v) could raise a DSSN certificate.

docs/design.md, section 6. Moving pixel i of a grid input x = a / q by n
steps within [0, 1] changes the noisy input of a cyclic block of samples:
with the anchor u_i = (a_i - v_i) mod L, moving up (n <= q - a_i) changes
samples u_i, u_i + 1, ..., u_i + n - 1 and moving down (n <= a_i) changes
u_i - 1, ..., u_i - n (mod L). The certificate steps = floor(gap / 2) is
exact for a given input when s + 1 steps inside the box can change s + 1
distinct samples (no step wasted on a sample another step already changed)
and the samples' noisy inputs can be labelled freely: then some base
classifier with the same counts loses A at a grid point (s + 1) / q away.

`disjoint_moves` finds such moves (a dynamic programme over the cycle of
samples, cut once); `exact_up_to` adds the labelling condition and returns
the largest s + 1 for which this input's certificate is provably exact.
NumPy, host-side: a research check, not part of certification.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dssn_jax.core import smoothing
from dssn_jax.core.smoothing import SmoothingSpec


def anchors(a, v, levels: int) -> np.ndarray:
  """Anchor u = (a - v) mod L of every pixel (flat int64)."""
  a = np.asarray(a, np.int64).ravel()
  v = np.asarray(v, np.int64).ravel()
  return (a - v) % levels


def _per_anchor(a, u, q: int, levels: int):
  """Per anchor value: the pixel of smallest a (most room up), the pixel
  of largest a (most room down; a different pixel when two are there) and
  how many pixels sit there."""
  order = np.lexsort((a, u))  # by anchor, then a
  u_sorted = u[order]
  first = np.searchsorted(u_sorted, np.arange(levels), side="left")
  last = np.searchsorted(u_sorted, np.arange(levels), side="right") - 1
  count = last - first + 1
  present = count > 0
  up_pixel = np.where(present, order[np.minimum(first, len(u) - 1)], -1)
  down_pixel = np.where(present, order[np.clip(last, 0, None)], -1)
  up_room = np.where(present, q - a[np.maximum(up_pixel, 0)], 0)
  down_room = np.where(present, a[np.maximum(down_pixel, 0)], 0)
  return up_pixel, down_pixel, up_room, down_room, count


def disjoint_moves(a, v, q: int, levels: int) -> np.ndarray:
  """Moves inside the box whose changed sample blocks are disjoint.

  Maximizes the number of changed samples among moves that waste no step,
  with the cycle of samples cut at one boundary (an anchor-free one when
  there is one): a lower bound of the best such number, exact on the cut
  cycle.

  Args:
    a: grid values of the input, integers in 0..q (any shape).
    v: the offsets, same shape.
    q: quantization.
    levels: L.

  Returns:
    int64 array like a: signed steps per pixel (+ up, - down), each pixel
    within [0, q]; sum(|steps|) samples change, one per step.
  """
  a = np.asarray(a, np.int64)
  shape = a.shape
  a = a.ravel()
  u = anchors(a, v, levels)
  occupied = np.zeros(levels, bool)
  occupied[u] = True
  cut = int(np.argmin(occupied)) if not occupied.all() else 0
  # Boundary j of the cut line is anchor value (cut + j) mod L; boundary L
  # is boundary 0 again, so left moves may not end there.
  up_pixel, down_pixel, up_room, down_room, count = (
      np.roll(t, -cut) for t in _per_anchor(a, u, q, levels)
  )
  up_room_second = np.where(count >= 2, up_room, 0)
  length = levels
  best = np.full((length + 1, 2), -1, np.int64)  # -1: unreachable
  best[0, 0] = 0
  parent = np.zeros((length + 1, 2, 3), np.int64)  # (from j, from used, kind)
  kinds = {"skip": 0, "up": 1, "down": 2}

  def relax(targets, state, values, j, used, kind):
    better = values > best[targets, state]
    targets, values = targets[better], values[better]
    best[targets, state] = values
    parent[targets, state] = (j, used, kinds[kind])

  for j in range(length):
    for used in (0, 1):
      base = best[j, used]
      if base < 0:
        continue
      relax(np.array([j + 1]), 0, np.array([base]), j, used, "skip")
      room = min(up_room[j] if used == 0 else up_room_second[j], length - j)
      if room > 0:
        n = np.arange(1, room + 1)
        relax(j + n, 0, base + n, j, used, "up")
    # A down move anchored at boundary j2 covers positions j .. j2 - 1.
    base, used = max((best[j, 0], 0), (best[j, 1], 1))
    if base >= 0:
      j2 = np.arange(j + 1, min(length - 1, j + q) + 1)
      fits = down_room[j2] >= j2 - j
      relax(j2[fits], 1, base + (j2[fits] - j), j, used, "down")
  steps = np.zeros_like(a)
  j, used = length, 0
  while j > 0:
    from_j, from_used, kind = parent[j, used]
    if kind == kinds["up"]:
      steps[up_pixel[from_j]] = j - from_j
    elif kind == kinds["down"]:
      steps[down_pixel[j]] = -(j - from_j)
    j, used = from_j, from_used
  return steps.reshape(shape)


def trim(steps, size: int) -> np.ndarray:
  """The first `size` steps of disjoint moves (still disjoint): moves are
  shortened at their far end, in flat pixel order."""
  steps = np.asarray(steps, np.int64)
  flat = steps.ravel()
  budget = np.clip(size - (np.cumsum(np.abs(flat)) - np.abs(flat)), 0, None)
  kept = np.sign(flat) * np.minimum(np.abs(flat), budget)
  return kept.reshape(steps.shape)


@functools.partial(jax.jit, static_argnums=2)
def _all_samples(x, v, spec: SmoothingSpec):
  k = jnp.arange(spec.levels)[:, None]
  return smoothing.dssn_noise(x[None], v[None], k, spec)


def noisy_grid(x, v, spec: SmoothingSpec) -> np.ndarray:
  """(L, d) int64: 4 q xt of every DSSN sample of x (the library's noise)."""
  x = jnp.asarray(np.asarray(x, np.float32).ravel())
  v = jnp.asarray(np.asarray(v, np.int32).ravel())
  noisy = np.asarray(_all_samples(x, v, spec), np.float64)
  return np.rint(noisy * 4 * spec.q).astype(np.int64)


def exact_up_to(x, v, spec: SmoothingSpec) -> int:
  """Largest m for which every DSSN certificate of x with steps <= m - 1 is
  exact, even knowing x, v and that x' stays in [0, 1]^d.

  For counts c with steps s <= m - 1 there is then a base classifier with
  the counts c at x that loses A at a grid point of [0, 1]^d at l1 distance
  (s + 1) / q: `trim(disjoint_moves(...), s + 1)` changes s + 1 distinct
  samples, and the pixels it leaves alone already tell all L noisy inputs
  apart, so the old and new noisy inputs of the changed samples are all
  distinct and can vote A before and B after. Returns 0 when that cannot be
  shown for any m (the certificate may then be raisable).

  Args:
    x: a grid input in [0, 1] (any shape).
    v: its offsets.
    spec: the smoothing spec (q, L).
  """
  x = np.asarray(x, np.float64)
  a = np.rint(x * spec.q).astype(np.int64)
  if np.any(np.abs(x * spec.q - a) > 1e-4) or np.any((a < 0) | (a > spec.q)):
    raise ValueError("exact_up_to needs a grid input in [0, 1].")
  steps = disjoint_moves(a, v, spec.q, spec.levels).ravel()
  noisy = noisy_grid(x, v, spec)

  def separated(size):  # the pixels trim(steps, size) leaves alone
    unmoved = noisy[:, trim(steps, size) == 0]
    return len(np.unique(unmoved, axis=0)) == spec.levels

  # Shorter moves leave more pixels alone: the largest size that works.
  low, high = 0, int(np.abs(steps).sum())
  while low < high:
    mid = (low + high + 1) // 2
    low, high = (mid, high) if separated(mid) else (low, mid - 1)
  return low
