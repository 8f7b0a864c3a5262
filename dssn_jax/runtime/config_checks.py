"""Checks of config fields that the command line can set to anything.

Integer fields use -1 as the sentinel for "all" or "automatic" (so that each
field keeps one type and can be overridden with --config.field=value); any
other value must be a positive number. A value outside that set is an error
naming the field and its allowed values, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Iterable
import math

# Integer fields whose documented values are -1 (all / automatic) or >= 1.
SENTINEL_FIELDS = (
    "steps_per_epoch",
    "eval_max_examples",
    "certify.max_examples",
    "certify.batch_size",
    "certify.chunk_size",
)
# Integer fields that must be positive.
POSITIVE_FIELDS = (
    "batch_size",
    "num_epochs",
    "eval_batch_size",
    "log_every_steps",
    "keep_checkpoints",
    "certify.skip",
    "certify.n0",
    "certify.n",
)
NON_NEGATIVE_FIELDS = ("checkpoint_every_steps", "certify.start")
# Worker-process counts: -1 (the dataset's default), 0 (none) or more.
WORKER_FIELDS = ("decode_workers",)


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    if part not in value:
      return None
    value = value[part]
  return value


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_integer_fields(config, fields: Iterable[str] | None = None) -> None:
  """Raises ValueError for an integer field outside its documented values.

  Args:
    config: a config of configs/ (fields that it lacks are skipped).
    fields: restrict the check to these dotted names (default: all known).
  """
  wanted = None if fields is None else set(fields)
  rules = (
      [
          (
              name,
              "-1 (all or automatic) or a positive integer",
              lambda v: v == -1 or v >= 1,
          )
          for name in SENTINEL_FIELDS
      ]
      + [
          (name, "a positive integer", lambda v: v >= 1)
          for name in POSITIVE_FIELDS
      ]
      + [
          (name, "an integer >= 0", lambda v: v >= 0)
          for name in NON_NEGATIVE_FIELDS
      ]
      + [
          (
              name,
              "-1 (the default), 0 (no worker processes) or a positive "
              "integer",
              lambda v: v >= -1,
          )
          for name in WORKER_FIELDS
      ]
  )
  for name, allowed, ok in rules:
    if wanted is not None and name not in wanted:
      continue
    value = _get(config, name)
    if value is None:
      continue
    if not _is_int(value) or not ok(value):
      raise ValueError(
          f"config.{name} must be {allowed}, got {value!r}; set it with "
          f"--config.{name}=..."
      )


# Dtypes the models compute in ("" for certify.compute_dtype: the
# checkpoint's own).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_compute_dtype(config, field: str = "compute_dtype") -> None:
  """Raises ValueError when config.<field> names no dtype the models use."""
  value = _get(config, field)
  allowed = COMPUTE_DTYPES + (("",) if field.startswith("certify.") else ())
  if value is not None and value not in allowed:
    raise ValueError(
        f"config.{field} must be one of {allowed}, got {value!r}; set it "
        f"with --config.{field}=..."
    )


def check_certify_fields(config) -> None:
  """Raises ValueError for certify fields no run could use, before any work
  starts: compute dtype, alpha (a probability in (0, 1)) and the radii of
  the summary (finite, >= 0)."""
  check_compute_dtype(config, "certify.compute_dtype")
  alpha = _get(config, "certify.alpha")
  if alpha is not None and (
      not isinstance(alpha, (int, float))
      or isinstance(alpha, bool)
      or not 0 < alpha < 1
  ):
    raise ValueError(
        f"config.certify.alpha must be in (0, 1) (the certificates' failure "
        f"probability), got {alpha!r}; set it with --config.certify.alpha=..."
    )
  radii = _get(config, "certify.radii")
  if radii is not None:
    values = list(radii) if isinstance(radii, (list, tuple)) else [radii]
    if not values or any(
        not isinstance(r, (int, float))
        or isinstance(r, bool)
        or not math.isfinite(r)
        or r < 0
        for r in values
    ):
      raise ValueError(
          f"config.certify.radii must be finite l1 radii >= 0, got "
          f"{radii!r}; set them with --config.certify.radii=..."
      )
