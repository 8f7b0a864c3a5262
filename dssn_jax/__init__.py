"""dssn-jax: exact l1 certified robustness by Deterministic Smoothing with
Splitting Noise (Levine & Feizi, ICML 2021) in JAX.

The core API (docs/design.md, section 1):

  spec = dssn_jax.SmoothingSpec(sigma=0.5, q=255)
  v = dssn_jax.make_offsets(seed, shape, spec.levels)
  counts = dssn_jax.dssn_counts(apply_fn, x, v, spec)
  pred, steps, radius = dssn_jax.certify_from_counts(counts, spec)

Importing the package adds dssn-jax's default XLA options to XLA_FLAGS if JAX
has not started a backend yet (`dssn_jax.xla_options`; opt out with
DSSN_JAX_XLA_DEFAULTS=0).
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
from dssn_jax import xla_options

xla_options.apply_defaults()

from dssn_jax.certify import certify_from_counts
from dssn_jax.certify import certify_randomized
from dssn_jax.certify import check_inputs
from dssn_jax.certify import clopper_pearson_lower
from dssn_jax.certify import dssn_counts
from dssn_jax.certify import make_mesh
from dssn_jax.certify import RandomizedCertificate
from dssn_jax.certify import sample_counts
from dssn_jax.smoothing import dssn_noise
from dssn_jax.smoothing import make_offsets
from dssn_jax.smoothing import NOISE_KINDS
from dssn_jax.smoothing import offsets_fingerprint
from dssn_jax.smoothing import random_dssn_noise
from dssn_jax.smoothing import random_noise
from dssn_jax.smoothing import SmoothingSpec
from dssn_jax.smoothing import split_values
from dssn_jax.smoothing import ssn_noise
from dssn_jax.smoothing import uniform_noise

__version__ = "0.1.0"
