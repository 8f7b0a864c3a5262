"""What a randomized run would certify with another number of samples.

A randomized certificate from N samples stores p_lower = Beta(alpha/2; k,
N - k + 1), from which the count k of the selected class is recovered
exactly (`clopper_pearson.counts_from_p_lower`). `radius_at_n` recomputes
the radius for n_new samples with the count that keeps the frequency k / N:
the certificate the run would have produced had it observed the same
frequency with n_new samples. It estimates what a small N costs the
randomized baselines (docs/fashion_mnist.md); it is not a certificate, and
`sample_size` checks it image for image against a real run at n_new.

Pure NumPy/SciPy: nothing here imports JAX or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dssn_jax.core import clopper_pearson
from dssn_jax.core import methods
from dssn_jax.reports.certified_runs import CertifiedRun


def radius_at_n(
    p_lower, n: int, n_new: int, alpha: float, lam: float
) -> np.ndarray:
  """Radii 2 lam (p_lower' - 1/2) at n_new samples and the same frequency.

  Args:
    p_lower: (M,) lower bounds of a run with n estimation samples.
    n, n_new: the run's and the hypothetical sample sizes.
    alpha: the run's alpha.
    lam: the run's half-width lambda = sigma * sqrt(3), [0, 1] pixel units.

  Returns:
    (M,) l1 radii, [0, 1] pixel units; negative where the bound at n_new
    would still abstain.
  """
  k = clopper_pearson.counts_from_p_lower(p_lower, n, alpha)
  k_new = np.rint(k * (n_new / n)).astype(np.int64)
  bound = clopper_pearson.clopper_pearson_lower(k_new, n_new, alpha)
  return 2 * lam * (bound - 0.5)


def at_sample_size(run: CertifiedRun, n_new: int) -> CertifiedRun | None:
  """Our randomized run with radii recomputed for n_new samples at the same
  empirical frequencies (`radius_at_n`); None for exact runs, the authors'
  runs, the top-2 and box certificates (`certified_runs.certificate_variants`)
  and runs whose metadata lacks n or alpha."""
  meta = run.metadata
  if (
      run.source != "ours"
      or run.certificate != "paper"
      or methods.method(run.method).exact
      or "p_lower" not in run.results
      or "n" not in meta
      or "alpha" not in meta
  ):
    return None
  radius = radius_at_n(
      run.results["p_lower"],
      int(meta["n"]),
      n_new,
      float(meta["alpha"]),
      math.sqrt(3) * run.sigma,
  )  # lambda of docs/design.md, section 1.
  return dataclasses.replace(run, results={**run.results, "radius": radius})
