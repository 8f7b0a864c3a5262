"""The noise kinds and certification methods: one table of per-method facts.

Code that treats methods differently reads a field of `Method` instead of
comparing names. No JAX here, so that results files and their analysis can
name methods without starting JAX.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Certificate:
  """One certificate a method's results rows record (core/box.py).

  Attributes:
    kind: "paper" (the certificate of the paper: DSSN's exact one, Yang et
      al.'s for the randomized methods; in the `predict` and `radius`
      columns), "top2" (p_A lower and p_B upper bounds, no box) or "box"
      (top-2 bounds within [0, 1]^d, Voracek & Hein 2023).
    label: its name in tables and plot legends.
    predict_column: the column of its class (-1 where it abstains).
    radius_column: the column of its l1 radius.
    linestyle: its line style in plots (matplotlib).
  """

  kind: str
  label: str
  predict_column: str
  radius_column: str
  linestyle: str


def _randomized_certificates(noise: str) -> tuple[Certificate, ...]:
  """The paper's certificate of a randomized method, then top-2 and box."""
  return (
      Certificate(
          "paper", f"{noise} (Yang et al. 2020)", "predict", "radius", "-"
      ),
      Certificate(
          "top2", f"{noise}, top-2", "predict_top2", "radius_top2", "-."
      ),
      Certificate(
          "box",
          f"{noise}, box-constrained (Voracek & Hein 2023)",
          "predict_top2",
          "radius_box",
          ":",
      ),
  )


# The columns of randomized rows: the paper's p_lower, then what the top-2
# and box certificates need and give (results_format.py).
_RANDOMIZED_COLUMNS = (
    "p_lower",
    "count_top",
    "count_runner_up",
    "predict_top2",
    "p_b_upper",
    "radius_top2",
    "radius_box",
)


def _decided(label: str) -> Certificate:
  """The one certificate of a deciding method, at the requested radii."""
  return Certificate("paper", label, "predict", "radius", "-")


# The columns of a deciding method's rows (results_format.py): the samples
# its answers rest on and the smallest requested radius refused.
_DECIDING_COLUMNS = ("samples", "radius_refused")


@dataclasses.dataclass(frozen=True)
class Method:
  """What the rest of the package needs to know about one method.

  Attributes:
    name: the method's name in configs, results files and tables.
    label: its name in tables and plot legends (that of its paper's
      certificate, `certificates[0]`).
    exact: True for the deterministic certificate (counts over all L splits,
      certificate exact); False for the baselines certified by sampling
      (n0 selection draws, n counting draws, a Clopper-Pearson bound).
    result_columns: the columns a results file adds to the base columns.
    certificates: the certificates its rows record, the paper's first.
    legacy_result_columns: the result_columns of files written by earlier
      versions, still read (without the certificates they lack).
    color: its colour in plots (matplotlib name).
    reference_name: how the authors' published runs name it ("" for ours
      alone).
    decides: True for a method that answers only at the requested radii
      (`certify.radii`, recorded with the run) with as few samples as
      decide them (design.md, section 7): its `radius` is the largest
      requested radius certified, never a radius between them.
    noise: the noise it certifies with, when not its name.
  """

  name: str
  label: str
  exact: bool
  result_columns: tuple[str, ...]
  color: str
  reference_name: str
  certificates: tuple[Certificate, ...] = ()
  legacy_result_columns: tuple[tuple[str, ...], ...] = ()
  decides: bool = False
  noise: str = ""

  @property
  def noise_kind(self) -> str:
    """The noise kind (`NOISE_KINDS`) it samples."""
    return self.noise or self.name

  @property
  def randomized(self) -> bool:
    return not self.exact

  def certificates_in(self, columns) -> tuple[Certificate, ...]:
    """The certificates whose columns are all among `columns` (those a
    results file holds; an old file lacks the top-2 and box ones)."""
    return tuple(
        c
        for c in self.certificates
        if {c.predict_column, c.radius_column} <= set(columns)
    )

  def certificate(self, kind: str) -> Certificate:
    """Its certificate of `kind`; a ValueError naming the known ones."""
    for c in self.certificates:
      if c.kind == kind:
        return c
    raise ValueError(
        f"method {self.name!r} has no {kind!r} certificate; it has "
        f"{', '.join(c.kind for c in self.certificates)}"
    )


_TABLE = (
    Method(
        name="dssn",
        label="DSSN",
        exact=True,
        result_columns=("count_top", "count_runner_up", "steps"),
        color="tab:red",
        reference_name="split_derandomized",
        certificates=(Certificate("paper", "DSSN", "predict", "radius", "-"),),
    ),
    Method(
        name="ssn",
        label="SSN, independent splits (Yang et al. 2020)",
        exact=False,
        result_columns=_RANDOMIZED_COLUMNS,
        color="tab:green",
        reference_name="split",
        certificates=_randomized_certificates("SSN, independent splits"),
        legacy_result_columns=(("p_lower",),),
    ),
    Method(
        name="uniform",
        label="Uniform additive noise (Yang et al. 2020)",
        exact=False,
        result_columns=_RANDOMIZED_COLUMNS,
        color="tab:blue",
        reference_name="uniform",
        certificates=_randomized_certificates("Uniform additive noise"),
        legacy_result_columns=(("p_lower",),),
    ),
    Method(
        name="dssn_early",
        label="DSSN, early exit at the requested radii",
        exact=True,
        result_columns=_DECIDING_COLUMNS + ("count_top", "count_runner_up"),
        color="darkred",
        reference_name="",
        certificates=(_decided("DSSN, early exit at the requested radii"),),
        decides=True,
        noise="dssn",
    ),
    Method(
        name="ssn_seq",
        label="SSN, sequential at the requested radii",
        exact=False,
        result_columns=_DECIDING_COLUMNS + ("p_lower", "count_top"),
        color="darkgreen",
        reference_name="",
        certificates=(_decided("SSN, sequential at the requested radii"),),
        decides=True,
        noise="ssn",
    ),
    Method(
        name="uniform_seq",
        label="Uniform, sequential at the requested radii",
        exact=False,
        result_columns=_DECIDING_COLUMNS + ("p_lower", "count_top"),
        color="navy",
        reference_name="",
        certificates=(_decided("Uniform, sequential at the requested radii"),),
        decides=True,
        noise="uniform",
    ),
)
_BY_NAME = {m.name: m for m in _TABLE}
assert all(m.certificates[0].label == m.label for m in _TABLE)

# Certification methods (and results-file kinds), in the order of the tables.
METHODS = tuple(m.name for m in _TABLE)
# Noise kinds certified by sampling: the paper's randomized baselines.
RANDOMIZED_NOISE_KINDS = tuple(
    m.name for m in _TABLE if m.randomized and not m.decides
)
# Training noise kinds: every method's noise, or "none" (clean training).
NOISE_KINDS = tuple(m.name for m in _TABLE if not m.decides) + ("none",)


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
    if m.reference_name and m.reference_name == reference_name:
      return m
  raise ValueError(f"unknown reference method {reference_name!r}")
