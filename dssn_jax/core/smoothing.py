"""Smoothing specification, offset vectors and noise kernels.

The notation follows docs/design.md, section 1 (Levine & Feizi, ICML 2021).
Inputs live in [0, 1] on the grid {0, 1/q, ..., 1}; `sigma` is the user-facing
noise level and `lam = sigma * sqrt(3)` the half-width of the equivalent
uniform noise. Deterministic smoothing uses `L = floor(2 * lam * q)` noise
samples.

The DSSN kernel is computed in integer arithmetic: for a grid input `x = a/q`
and split value `s = (m + 1/2)/q` every quantity of the formula is an integer
multiple of 1/(4q), so the noisy input is exact (the same bits on every
device, batch size and chunk size) rather than the result of float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from dssn_jax.core.methods import NOISE_KINDS

# The largest value of the int32 arithmetic of the noise kernels.
INT32_MAX = 2**31 - 1

OFFSET_LAYOUTS = ("jax", "torch")


@dataclasses.dataclass(frozen=True)
class SmoothingSpec:
  """Noise level and input quantization of a smoothed classifier.

  Attributes:
    sigma: standard deviation of the noise, in input units ([0, 1] scale).
    q: number of quantization steps of the input (255 for 8-bit images).
  """

  sigma: float
  q: int = 255

  def __post_init__(self):
    if isinstance(self.q, bool) or not float(self.q).is_integer() or self.q < 1:
      raise ValueError(
          f"q must be a positive integer (inputs lie on the grid k/q), got "
          f"q={self.q!r}; use q=255 for 8-bit images."
      )
    object.__setattr__(self, "q", int(self.q))
    sigma = float(self.sigma)
    if not math.isfinite(sigma) or sigma <= 0:
      raise ValueError(
          f"sigma must be a finite positive number, got sigma={self.sigma!r}."
      )
    object.__setattr__(self, "sigma", sigma)
    if self.levels < 1:
      min_sigma = 1 / (2 * math.sqrt(3) * self.q)
      raise ValueError(
          f"sigma={sigma} is too small for q={self.q}: it gives "
          f"L = floor(2 * sigma * sqrt(3) * q) = {self.levels} noise levels, "
          f"and DSSN needs at least one. Use sigma >= {min_sigma:.6g}."
      )
    self._check_int32()

  def _check_int32(self) -> None:
    """Refuses sizes whose noise the int32 kernels cannot compute.

    `dssn_noise` works in units of 1/(2q) and 1/(4q): its largest
    intermediates are t2 < 2q + 2L (the cut above x) and 4q * xt <= 4q, and
    the offsets and counts hold values up to L. All must stay below 2**31.
    """
    if 4 * self.q > INT32_MAX:
      raise ValueError(
          f"q={self.q} is too large: the integer DSSN noise kernels compute "
          f"4 * q = {4 * self.q}, which must fit in int32 (q <= "
          f"{INT32_MAX // 4})."
      )
    if 2 * self.q + 2 * self.levels > INT32_MAX:
      max_sigma = (INT32_MAX // 2 - self.q) / (2 * math.sqrt(3) * self.q)
      raise ValueError(
          f"sigma={self.sigma} is too large for q={self.q}: it gives L = "
          f"{self.levels} noise levels, and the integer DSSN noise kernels "
          f"compute 2 * q + 2 * L = {2 * self.q + 2 * self.levels}, which "
          f"must fit in int32 (< 2**31). Use sigma <= {max_sigma:.6g}."
      )

  @property
  def lam(self) -> float:
    """Half-width lambda of the uniform noise, `sigma * sqrt(3)`."""
    return self.sigma * math.sqrt(3)

  @property
  def levels(self) -> int:
    """Number L of deterministic noise samples, `floor(2 * lam * q)`.

    A product within 1e-9 (relative) below an integer counts as that integer,
    so that sigma = n / (2 * sqrt(3) * q) gives n levels despite float error.
    """
    product = 2 * self.lam * self.q
    return math.floor(product * (1 + 1e-9))


def make_offsets(
    seed: int, shape: Sequence[int], levels: int, layout: str = "jax"
) -> jax.Array:
  """Draws the fixed offset vector `v` of a smoothed classifier.

  Args:
    seed: integer seed; the same seed gives the same offsets.
    shape: shape of one input, e.g. (H, W, C).
    levels: the number L of noise levels (`SmoothingSpec.levels`).
    layout: "jax" draws with `jax.random.randint`; "torch" reproduces the
      authors' PyTorch template `numpy.random.RandomState(seed).randint(L,
      size=d)`, laid out as (C, H, W) for a rank-3 (H, W, C) shape and
      transposed, in the shape's own order otherwise.

  Returns:
    int32 array of `shape` with entries in {0, ..., levels - 1}.
  """
  shape = tuple(int(n) for n in shape)
  if levels < 1:
    raise ValueError(f"levels must be >= 1, got {levels}.")
  if layout == "jax":
    return jax.random.randint(
        jax.random.key(seed), shape, 0, levels, dtype=jnp.int32
    )
  if layout == "torch":
    flat = np.random.RandomState(seed).randint(levels, size=math.prod(shape))
    if len(shape) == 3:
      height, width, channels = shape
      offsets = flat.reshape(channels, height, width).transpose(1, 2, 0)
    else:
      offsets = flat.reshape(shape)
    return jnp.asarray(offsets, dtype=jnp.int32)
  raise ValueError(
      f"Unknown offsets layout {layout!r}; expected one of {OFFSET_LAYOUTS}."
  )


def offsets_fingerprint(v) -> str:
  """sha256 hex digest of an offset vector (int32, C order, with its shape)."""
  array = np.ascontiguousarray(np.asarray(v, dtype=np.int32))
  digest = hashlib.sha256(repr(array.shape).encode())
  digest.update(array.tobytes())
  return digest.hexdigest()


def split_index(v: jax.Array, k, spec: SmoothingSpec) -> jax.Array:
  """Integer m = (v + k) mod L of the split values s = (m + 1/2) / q.

  Both terms are reduced mod L before the sum, so that no int32 v and k can
  overflow (v + k wraps for offsets near 2**31, which would break the one
  split per step that the certificate rests on).
  """
  levels = spec.levels
  k = jnp.asarray(k)
  k = k.astype(jnp.int32) if jnp.issubdtype(k.dtype, jnp.integer) else k
  return (v.astype(jnp.int32) % levels + k % levels) % levels


def split_values(v: jax.Array, k, spec: SmoothingSpec) -> jax.Array:
  """Split values `s(k) = ((v + k) mod L + 0.5) / q` of DSSN sample k
  (float)."""
  return (2 * split_index(v, k, spec) + 1).astype(jnp.float32) / (2 * spec.q)


def _ceil_div(a, b):
  """Integer ceiling division for b > 0 (jnp floor division rounds down)."""
  return -((-a) // b)


def dssn_noise(x: jax.Array, v: jax.Array, k, spec: SmoothingSpec) -> jax.Array:
  """Deterministic split noise: sample k of the L derandomized samples.

  Computes `xt` of docs/design.md, section 1, the centre of the sub-interval
  of [0, 1] (cut at s + n * L/q) that holds x, with
  `s = ((v + k) mod L + 1/2)/q`. The one formula covers every lambda.

  Args:
    x: inputs on the grid {0, 1/q, ..., 1}, any shape broadcastable with v.
      Off-grid values are rounded to the nearest grid point (callers that
      certify must validate; see `inputs.check_inputs`).
    v: int offsets in {0, ..., L-1} (from `make_offsets`).
    k: sample index in {0, ..., L-1}; a scalar or an int array broadcastable
      with x (vmap over k for many samples).
    spec: the smoothing spec.

  Returns:
    float array like x: the noisy input `to_float(4 * q * xt, q)`, where
    `4 * q * xt` is an integer.
  """
  q, levels = spec.q, spec.levels
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  a = jnp.round(x.astype(jnp.float32) * q).astype(jnp.int32)  # x = a / q
  m = split_index(v, k, spec)  # s = (2m + 1) / (2q)
  # All quantities below are in units of 1/(2q): x - s = (2a - 2m - 1),
  # L/q = 2L, t = s + n * L/q with n = ceil((x - s) / (L/q)).
  n = _ceil_div(2 * a - 2 * m - 1, 2 * levels)
  t2 = 2 * n * levels + 2 * m + 1
  # 4q * xt = 2q * (min(t, 1) + max(t - L/q, 0)) / 2, in units of 1/(4q).
  xt4 = jnp.minimum(t2, 2 * q) + jnp.maximum(t2 - 2 * levels, 0)
  return to_float(xt4, q).astype(dtype)


def to_float(xt4: jax.Array, q: int) -> jax.Array:
  """The canonical float32 of a noisy value given as the integer 4 * q * xt.

  Multiplication by the float32 reciprocal is correctly rounded on every
  backend, while XLA rewrites division by a constant into exactly this
  product on some backends and not others; fixing the product makes the
  noisy input bit-identical everywhere (within one ulp of xt4 / (4q)).
  """
  return xt4.astype(jnp.float32) * np.float32(1 / (4 * q))


def random_dssn_noise(
    key: jax.Array, x: jax.Array, v: jax.Array, spec: SmoothingSpec
) -> jax.Array:
  """DSSN training noise: one uniform k in {0..L-1} per example.

  Args:
    key: PRNG key.
    x: (B, *shape) grid inputs.
    v: the classifier's own offsets, of shape `shape`.
    spec: the smoothing spec.

  Returns:
    (B, *shape) noisy inputs, each example one of its L DSSN samples.
  """
  k = jax.random.randint(key, (x.shape[0],), 0, spec.levels, dtype=jnp.int32)
  return jax.vmap(lambda xi, ki: dssn_noise(xi, v, ki, spec))(x, k)


def ssn_noise(key: jax.Array, x: jax.Array, spec: SmoothingSpec) -> jax.Array:
  """Randomized split noise with independent continuous splits (SSN).

  `s_i ~ U(0, 2 lam)` i.i.d.; then the centre formula with L/q replaced by
  2 lam. Needs no grid.

  Args:
    key: PRNG key.
    x: inputs in [0, 1], any shape; every element gets its own split.
    spec: the smoothing spec (only `lam` is used).

  Returns:
    noisy inputs like x.
  """
  width = 2 * spec.lam
  s = jax.random.uniform(key, x.shape, x.dtype, 0.0, width)
  t = jnp.ceil((x - s) / width) * width + s
  return (jnp.minimum(t, 1.0) + jnp.maximum(t - width, 0.0)) / 2


def uniform_noise(
    key: jax.Array, x: jax.Array, spec: SmoothingSpec
) -> jax.Array:
  """Uniform additive noise `x + U(-lam, lam)` (Yang et al., 2020)."""
  return x + jax.random.uniform(key, x.shape, x.dtype, -spec.lam, spec.lam)


def random_noise(
    kind: str,
    key: jax.Array,
    x: jax.Array,
    spec: SmoothingSpec,
    v: jax.Array | None = None,
) -> jax.Array:
  """Draws fresh training or sampling noise of the given kind per example.

  Args:
    kind: "dssn" (needs v), "ssn", "uniform" or "none".
    key: PRNG key.
    x: (B, *shape) inputs in [0, 1].
    spec: the smoothing spec.
    v: the classifier's offsets, for "dssn".

  Returns:
    (B, *shape) noisy inputs.
  """
  if kind == "dssn":
    if v is None:
      raise ValueError("DSSN noise needs the classifier's offsets v.")
    return random_dssn_noise(key, x, v, spec)
  if kind == "ssn":
    return ssn_noise(key, x, spec)
  if kind == "uniform":
    return uniform_noise(key, x, spec)
  if kind == "none":
    return x
  raise ValueError(
      f"Unknown noise kind {kind!r}; expected one of {NOISE_KINDS}."
  )
