"""The names of the noise kinds and certification methods, in one place.

No JAX here, so that results files and their analysis can name methods
without starting JAX.
"""

# Training noise kinds ("none": clean training).
NOISE_KINDS = ("dssn", "ssn", "uniform", "none")
# Noise kinds certified by sampling: the paper's randomized baselines.
RANDOMIZED_NOISE_KINDS = ("ssn", "uniform")
# Certification methods (and results-file kinds), in the order of the tables.
METHODS = ("dssn",) + RANDOMIZED_NOISE_KINDS
