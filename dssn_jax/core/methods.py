"""The noise kinds and certification methods: one table of per-method facts.

Code that treats methods differently reads a field of `Method` instead of
comparing names. No JAX here, so that results files and their analysis can
name methods without starting JAX.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
  """What the rest of the package needs to know about one method.

  Attributes:
    name: the method's name in configs, results files and tables.
    label: its name in tables and plot legends.
    exact: True for the deterministic certificate (counts over all L splits,
      certificate exact); False for the baselines certified by sampling
      (n0 selection draws, n counting draws, a Clopper-Pearson bound).
    result_columns: the columns a results file adds to the base columns.
    color: its colour in plots (matplotlib name).
    reference_name: how the authors' published runs name it.
  """

  name: str
  label: str
  exact: bool
  result_columns: tuple[str, ...]
  color: str
  reference_name: str

  @property
  def randomized(self) -> bool:
    return not self.exact


_TABLE = (
    Method(
        name="dssn",
        label="DSSN",
        exact=True,
        result_columns=("count_top", "count_runner_up", "steps"),
        color="tab:red",
        reference_name="split_derandomized",
    ),
    Method(
        name="ssn",
        label="SSN, independent splits (randomized)",
        exact=False,
        result_columns=("p_lower",),
        color="tab:green",
        reference_name="split",
    ),
    Method(
        name="uniform",
        label="Uniform additive noise (randomized)",
        exact=False,
        result_columns=("p_lower",),
        color="tab:blue",
        reference_name="uniform",
    ),
)
_BY_NAME = {m.name: m for m in _TABLE}

# Certification methods (and results-file kinds), in the order of the tables.
METHODS = tuple(m.name for m in _TABLE)
# Noise kinds certified by sampling: the paper's randomized baselines.
RANDOMIZED_NOISE_KINDS = tuple(m.name for m in _TABLE if m.randomized)
# Training noise kinds: every method's noise, or "none" (clean training).
NOISE_KINDS = METHODS + ("none",)


def method(name: str) -> Method:
  """The `Method` called `name`; a ValueError naming the known ones."""
  try:
    return _BY_NAME[name]
  except KeyError:
    raise ValueError(
        f"unknown method {name!r}; expected one of {', '.join(METHODS)}"
    ) from None


def by_reference_name(reference_name: str) -> Method:
  """The `Method` the authors' published runs call `reference_name`."""
  for m in _TABLE:
    if m.reference_name == reference_name:
      return m
  raise ValueError(f"unknown reference method {reference_name!r}")
