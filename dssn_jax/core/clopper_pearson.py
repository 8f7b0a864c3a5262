"""Clopper-Pearson bounds, and the counts behind them.

`clopper_pearson_lower` is the bound of `randomized.certify_randomized`. A
randomized certificate from N samples stores p_lower = Beta(alpha/2; k,
N - k + 1), from which `counts_from_p_lower` recovers the count k of the
selected class exactly.
"""

from __future__ import annotations

import numpy as np


def beta_quantile(q, a, b) -> np.ndarray:
  """The q-quantile of Beta(a, b), elementwise (`scipy.stats.beta.ppf`).

  scipy.stats is imported at the first call, not with the package: its
  import takes about 0.8 s, a quarter of a command's start-up, and training
  or DSSN certification never needs it.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  return stats.beta.ppf(q, a, b)


def clopper_pearson_lower(successes, trials: int, alpha: float) -> np.ndarray:
  """Lower end of the two-sided Clopper-Pearson interval at level alpha.

  `Beta(alpha/2; k, n - k + 1)` quantile, 0 when k = 0 (float64). Pure
  NumPy/SciPy, so analysis code can use it without JAX.
  """
  successes = np.asarray(successes)
  bound = beta_quantile(
      alpha / 2, np.maximum(successes, 1), trials - successes + 1
  )
  return np.where(successes == 0, 0.0, bound)


def counts_from_p_lower(p_lower, n: int, alpha: float) -> np.ndarray:
  """The counts k in 0..n whose Clopper-Pearson lower bound is p_lower.

  Args:
    p_lower: (M,) lower bounds written by `randomized.certify_randomized`.
    n: the estimation samples of the run.
    alpha: the run's alpha.

  Returns:
    (M,) int64 counts.

  Raises:
    ValueError: if a value is no Clopper-Pearson bound of (n, alpha).
  """
  p_lower = np.asarray(p_lower, np.float64)
  # The bound increases with k, so the nearest table entry is one of the two
  # around p's insertion point: O(M log n) time and O(M + n) memory (an
  # (M, n + 1) table of distances is 8 GB at n = 100,000, M = 10,000).
  table = clopper_pearson_lower(np.arange(n + 1), n, alpha)
  above = np.clip(np.searchsorted(table, p_lower), 1, n)
  below = above - 1
  nearest = np.where(
      p_lower - table[below] <= table[above] - p_lower, below, above
  )
  error = np.abs(table[nearest] - p_lower)
  if error.size and error.max() > 1e-9:
    raise ValueError(
        f"p_lower values are no two-sided Clopper-Pearson bounds for n={n}, "
        f"alpha={alpha} (off by {error.max():.3g}); pass the run's own n and "
        f"alpha."
    )
  return nearest.astype(np.int64)
