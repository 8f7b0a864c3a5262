"""dssn-jax: exact l1 certified robustness by Deterministic Smoothing with
Splitting Noise (Levine & Feizi, ICML 2021) in JAX.

The core API (docs/design.md, section 1):

  spec = dssn_jax.SmoothingSpec(sigma=0.5, q=255)
  v = dssn_jax.make_offsets(seed, shape, spec.levels)
  counts = dssn_jax.dssn_counts(apply_fn, x, v, spec)
  pred, steps, radius = dssn_jax.certify_from_counts(counts, spec)

The randomized baselines (`certify_randomized`) also give their estimation
counts, from which `certify_box` computes the top-2 and box-constrained
certificates (Voracek & Hein 2023; docs/design.md, section 6):

  cert = dssn_jax.certify_randomized(apply_fn, x, spec, key, noise="uniform")
  box = dssn_jax.certify_box(cert.counts, cert.selected, x, n=100_000,
                             alpha=0.001, lam=spec.lam)

Importing the package changes nothing in the process (no environment
variable, no XLA option). On CPUs, `dssn_jax.use_cpu_defaults()`, called once
before the first computation, turns on the XLA options the command-line
tools run with (docs/performance.md); GPU and TPU backends ignore them.

The layers of the package (docs/design.md, section 5): `core` (pure
certification math), `models`, `runtime` (the process: XLA options,
distributed start-up), `data`, `training`, `runs` (workdirs and results
files), `reports` (tables and plots of runs).
"""

from dssn_jax.core.box import box_radius
from dssn_jax.core.box import BoxCertificate
from dssn_jax.core.box import certify_box
from dssn_jax.core.box import clopper_pearson_upper
from dssn_jax.core.box import joint_bounds
from dssn_jax.core.box import top2_radius
from dssn_jax.core.box import top_two_counts
from dssn_jax.core.clopper_pearson import clopper_pearson_lower
from dssn_jax.core.dssn import certify_from_counts
from dssn_jax.core.dssn import dssn_counts
from dssn_jax.core.dssn_decide import dssn_certified_at
from dssn_jax.core.dssn_decide import dssn_decide
from dssn_jax.core.inputs import check_inputs
from dssn_jax.core.placement import make_mesh
from dssn_jax.core.randomized import certify_randomized
from dssn_jax.core.randomized import RandomizedCertificate
from dssn_jax.core.randomized import sample_counts
from dssn_jax.core.randomized_decide import sequential_certify
from dssn_jax.core.smoothing import dssn_noise
from dssn_jax.core.smoothing import make_offsets
from dssn_jax.core.smoothing import NOISE_KINDS
from dssn_jax.core.smoothing import offsets_fingerprint
from dssn_jax.core.smoothing import random_dssn_noise
from dssn_jax.core.smoothing import random_noise
from dssn_jax.core.smoothing import SmoothingSpec
from dssn_jax.core.smoothing import split_values
from dssn_jax.core.smoothing import ssn_noise
from dssn_jax.core.smoothing import uniform_noise
from dssn_jax.runtime.xla_options import apply_defaults as use_cpu_defaults

__version__ = "0.1.0"

__all__ = [
    "BoxCertificate",
    "RandomizedCertificate",
    "NOISE_KINDS",
    "SmoothingSpec",
    "box_radius",
    "certify_box",
    "certify_from_counts",
    "certify_randomized",
    "check_inputs",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "dssn_certified_at",
    "dssn_counts",
    "dssn_decide",
    "dssn_noise",
    "joint_bounds",
    "make_mesh",
    "make_offsets",
    "offsets_fingerprint",
    "random_dssn_noise",
    "random_noise",
    "sample_counts",
    "sequential_certify",
    "split_values",
    "ssn_noise",
    "top2_radius",
    "top_two_counts",
    "uniform_noise",
    "use_cpu_defaults",
]
