"""Re-verifying a results file against its checkpoint and dataset.

`audit(path)` trusts nothing in a results file but what it can recompute. It
first applies the checks every reader applies (results_integrity.py: rows
consistent with the run metadata and with the file's digest), then
recertifies a random sample of the rows (or all) with the checkpoint and the
test images the run metadata names, and compares every column but `time`:

- **exact method (DSSN)**: counts over all L splits are integers, so the
  recomputed row must equal the stored one;
- **randomized methods**: the noise of image idx, draw j, is drawn from
  `fold_in(fold_in(key, j), idx)` with the run's seed, so recertifying with
  the same seed redraws the same noise and the row must be equal too (not a
  statistical test: any difference is a mismatch). With `fresh_noise_seed`
  the test is statistical instead: each certified row's count of its class
  is compared with its count under n fresh draws by a two-sided Fisher exact
  test at a stated level (Bonferroni over the rows).

Labels are compared with the dataset's. This is how a reader checks
certificates published with a model: the digest only catches naive edits
(anyone can recompute it), the audit catches any row the model and data do
not give. Recomputing under another backend or XLA options can move votes at
near ties of the logits; the report says when the computation differs from
the one the file records.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from dssn_jax.core import clopper_pearson
from dssn_jax.core import methods
from dssn_jax.core import randomized
from dssn_jax.core import smoothing
from dssn_jax.data import eval_input
from dssn_jax.runs import certify_batch
from dssn_jax.runs import results_format
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from dssn_jax.runtime import xla_options
from dssn_jax.training import checkpoints
from dssn_jax.training import denoising


@dataclasses.dataclass
class AuditReport:
  """What `audit` found.

  Attributes:
    path: the results file.
    rows: rows in the file.
    audited: idx of the rows recertified.
    integrity_error: why the file failed the reader's checks (None: passed).
    mismatches: one line per differing value, naming line, idx and column.
    differing: idx of the rows with a mismatch.
    notes: what the reader of the report should know (computation, seed).
  """

  path: str
  rows: int
  audited: list[int]
  integrity_error: str | None
  mismatches: list[str]
  differing: set[int]
  notes: list[str]

  @property
  def ok(self) -> bool:
    return self.integrity_error is None and not self.mismatches

  def format(self) -> str:
    """The report, a few lines (every mismatch on its own line)."""
    lines = [f"audit of {self.path}: {self.rows} rows"]
    lines.append(
        "file checks (run metadata, digest): "
        + (
            "passed"
            if self.integrity_error is None
            else f"FAILED: {self.integrity_error}"
        )
    )
    lines += [f"note: {n}" for n in self.notes]
    lines += [f"MISMATCH {m}" for m in self.mismatches]
    lines.append(
        f"recertified {len(self.audited)} of {self.rows} rows: "
        f"{len(self.audited) - len(self.differing)} match, "
        f"{len(self.differing)} differ"
    )
    return "\n".join(lines)


def audit(
    path: str | os.PathLike,
    *,
    workdir: str | None = None,
    denoiser_workdir: str | None = None,
    data_dir: str | None = None,
    sample: int = -1,
    seed: int = 0,
    batch_size: int = 16,
    fresh_noise_seed: int | None = None,
    level: float = 1e-3,
) -> AuditReport:
  """Re-verifies results file `path` (see the module docstring).

  Args:
    path: a results file written by a certification run.
    workdir: the training workdir of its classifier (default: the file's
      directory, where certification writes it).
    denoiser_workdir: the denoiser's workdir, for a denoised run.
    data_dir: the TFDS data dir of the test images.
    sample: rows to recertify, drawn at random (-1: all).
    seed: seed of that draw.
    batch_size: images per certification call.
    fresh_noise_seed: randomized methods: instead of redrawing the run's
      noise, count each row's class under n draws of this seed and test the
      two counts for equal probabilities (for a file computed elsewhere, where
      near ties of the logits could move a redrawn vote).
    level: the statistical test's level, over all tested rows.

  Returns:
    An AuditReport; `.ok` is False on any failed check or mismatch.
  """
  path = os.fspath(path)
  meta = results_metadata.read_metadata(path)
  run = meta.get("run") or {}
  integrity_error = _integrity_error(path)
  with open(path, "rb") as f:  # The rows as they are, checked or not.
    scan = results_format.scan(f.read(), path)
  rows = _draw_rows(scan, sample, seed)
  notes = _draw_notes(meta, run, len(rows), len(scan.rows), seed)
  classifier, spec, offsets = _classifier(
      run, workdir or os.path.dirname(os.path.abspath(path)), denoiser_workdir
  )
  notes += _computation_note(meta, run)
  if fresh_noise_seed is not None:
    _check_fixed_n(meta["method"])
    notes[1] = _statistical_note(fresh_noise_seed, level)
    recounted = _recount(
        run,
        meta["method"],
        classifier,
        spec,
        sorted(rows),
        data_dir,
        batch_size,
        fresh_noise_seed,
    )
    mismatches, differing = _statistical_mismatches(
        scan, rows, recounted, run, level
    )
  else:
    recomputed = _recertify(
        run,
        meta["method"],
        classifier,
        spec,
        offsets,
        sorted(rows),
        data_dir,
        batch_size,
    )
    mismatches, differing = _exact_mismatches(scan, rows, recomputed, run)
  return AuditReport(
      path,
      len(scan.rows),
      sorted(rows),
      integrity_error,
      mismatches,
      differing,
      notes,
  )


def _draw_notes(meta, run, drawn: int, total: int, seed: int) -> list[str]:
  """The report's first two notes: which rows were drawn, and how they are
  compared (exactly; `_statistical_note` replaces the second for a
  fresh-noise audit)."""
  return [
      f"{drawn} rows drawn with seed {seed}"
      if drawn < total
      else "every row recertified",
      "compared exactly: "
      + (
          "DSSN counts are integers"
          if methods.method(meta["method"]).exact
          else f"the randomized noise is redrawn with the run's seed "
          f"{run.get('seed')}"
      ),
  ]


def _statistical_note(fresh_noise_seed: int, level: float) -> str:
  """How a fresh-noise audit compares the rows."""
  return (
      f"compared statistically: each certified row's count of its class "
      f"against n fresh draws (seed {fresh_noise_seed}), two-sided Fisher "
      f"exact test at level {level} (Bonferroni over the rows); abstaining "
      "rows: labels only"
  )


def _integrity_error(path: str) -> str | None:
  """Why the file fails the checks every reader applies (None: it passes)."""
  try:
    results_reader.read_verified(path)
  except ValueError as e:
    return str(e)
  return None


def _draw_rows(scan, sample: int, seed: int) -> dict[int, tuple[Any, int]]:
  """{idx: (values, line)} of `sample` rows of `scan` drawn at random with
  `seed` (every row when sample is -1 or not below the row count)."""
  rng = np.random.default_rng(seed)
  chosen = np.arange(len(scan.rows))
  if 0 <= sample < len(scan.rows):
    chosen = np.sort(rng.choice(len(scan.rows), sample, replace=False))
  return {scan.rows[i][0]: (scan.rows[i], scan.lines[i]) for i in chosen}


def _check_fixed_n(method_name: str) -> None:
  """Raises ValueError unless `method_name` is a randomized method of fixed
  n, the only ones a fresh-noise test applies to."""
  method = methods.method(method_name)
  if method.exact or method.decides:
    raise ValueError(
        "fresh_noise_seed is for the randomized methods of fixed n "
        f"(ssn, uniform), not {method_name}."
    )


def _exact_mismatches(
    scan, rows, recomputed, run
) -> tuple[list[str], set[int]]:
  """Every value of `rows` but `time` that differs from the recomputed row
  (or a row whose image is not in the run's subset): (lines, idx)."""
  mismatches, differing = [], set()
  for idx, (values, line) in rows.items():
    got = recomputed.get(idx)
    if got is None:
      differing.add(idx)
      mismatches.append(
          f"line {line} idx {idx}: the image is not in {run.get('dataset')}'s "
          f"{run.get('split')} split subset the run names"
      )
      continue
    for column, stored in zip(scan.columns, values):
      if column != "time" and not _same(stored, got[column]):
        differing.add(idx)
        mismatches.append(
            f"line {line} idx {idx}: {column} stored {stored!r}, recomputed "
            f"{got[column]!r}"
        )
  return mismatches, differing


def _same(stored, recomputed) -> bool:
  if isinstance(stored, float) or isinstance(recomputed, float):
    a, b = float(stored), float(recomputed)
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
  return int(stored) == int(recomputed)


def _classifier(run, workdir: str, denoiser_workdir: str | None):
  """The classifier, spec and offsets the run metadata names, checked
  against it (checkpoint step, model, offsets)."""
  compute_dtype = run.get("compute_dtype")
  classifier = checkpoints.load_classifier(
      workdir, step=run.get("checkpoint_step"), compute_dtype=compute_dtype
  )
  if run.get("denoised"):
    if not denoiser_workdir:
      raise ValueError(
          "The results were certified behind a denoiser "
          f"({run['denoised']}); pass its workdir (--denoiser_workdir)."
      )
    classifier = denoising.compose(
        classifier,
        denoising.load_denoiser(denoiser_workdir, compute_dtype=compute_dtype),
    )
    if denoising.run_metadata(classifier) != {"denoised": run["denoised"]}:
      raise ValueError(
          f"The denoiser of {denoiser_workdir} is not the one the results "
          f"were certified with ({run['denoised']})."
      )
  problems = [
      f"{field}: results have {run[field]!r}, checkpoint has {have!r}"
      for field, have in (
          ("model", classifier.metadata["model"]),
          ("training_noise", classifier.metadata["noise"]),
      )
      if field in run and run[field] != have
  ]
  if problems:
    raise ValueError(
        f"The checkpoint in {workdir} is not the one the results were "
        "certified with: " + "; ".join(problems) + "."
    )
  spec = smoothing.SmoothingSpec(run["sigma"], run["q"])
  offsets = classifier.offsets
  if smoothing.offsets_fingerprint(offsets) != run.get("offsets_sha256"):
    raise ValueError(
        f"The results were certified with offsets of sha256 "
        f"{run.get('offsets_sha256')}, not the checkpoint's (certified with "
        "certify.override_smoothing?); the audit recertifies with the "
        "checkpoint's offsets only."
    )
  return classifier, spec, offsets


def _computation_note(meta, run) -> list[str]:
  history = meta.get("computation") or []
  now = xla_options.computation_record(run.get("compute_dtype", "float32"))
  if history and history[-1] != now:
    before = history[-1]
    keys = set(now) | set(before)
    changed = sorted(k for k in keys if now.get(k) != before.get(k))
    return [
        f"computed now under another computation than the file records "
        f"({', '.join(changed)}): votes at near ties of the logits may differ"
    ]
  return []


def _images(run, indices: Sequence[int], data_dir, batch_size: int):
  """(images, labels, idx) of the images `indices` of the run's subset."""
  images, labels, found = [], [], []
  wanted = np.asarray(indices, np.int64)
  max_examples = run.get("max_examples", -1)
  for batch in eval_input.eval_dataset(
      run["dataset"],
      split=run.get("split"),
      start=run.get("start", 0),
      skip=run.get("skip", 1),
      max_examples=None
      if max_examples is None or max_examples < 0
      else max_examples,
      batch_size=batch_size,
      data_dir=data_dir,
      process_index=0,
      process_count=1,
  ):
    keep = batch["mask"] & np.isin(batch["index"], wanted)
    images.append(batch["image"][keep])
    labels.append(batch["label"][keep])
    found.append(batch["index"][keep])
  return np.concatenate(images), np.concatenate(labels), np.concatenate(found)


def _padded_batches(images, found, batch_size: int):
  """(start, x, idx) batches of batch_size images, the last one padded with
  copies of its last image (one shape: one compilation)."""
  for start in range(0, len(found), batch_size):
    index = found[start : start + batch_size]
    x = certify_batch.to_inputs(images[start : start + batch_size])
    pad = batch_size - len(index)
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
      index = np.concatenate([index, np.repeat(index[-1:], pad)])
    yield start, x, index


def _recertify(
    run,
    method: str,
    classifier,
    spec,
    offsets,
    indices: Sequence[int],
    data_dir,
    batch_size: int,
) -> dict[int, dict[str, Any]]:
  """The rows of the images `indices`, certified again: {idx: columns}."""
  images, labels, found = _images(run, indices, data_dir, batch_size)
  # The run's certify fields (a deciding method's requested radii and first
  # look too), as certify_batch reads them.
  fields = dict(method=method, chunk_size=-1, seed=run.get("seed", 0))
  for name in ("n0", "n", "alpha", "radii", "first_look"):
    if run.get(name) is not None:
      fields[name] = run[name]
  cfg = ml_collections.ConfigDict(fields)
  out = {}
  for start, x, index in _padded_batches(images, found, batch_size):
    columns = certify_batch.certify_batch(
        cfg, classifier, spec, offsets, x, index
    )
    for j, idx in enumerate(found[start : start + batch_size]):
      label = int(labels[start + j])
      row = {k: np.asarray(v)[j].item() for k, v in columns.items()}
      row.update(
          idx=int(idx), label=label, correct=int(row["predict"] == label)
      )
      out[int(idx)] = row
  logging.info("Recertified %d rows.", len(out))
  return out


def _recount(
    run,
    method: str,
    classifier,
    spec,
    indices: Sequence[int],
    data_dir,
    batch_size: int,
    seed: int,
) -> dict[int, dict[str, Any]]:
  """{idx: {label, counts}}: the votes of each class of the images
  `indices` under n fresh noise draws (key `seed`, not the run's)."""
  images, labels, found = _images(run, indices, data_dir, batch_size)
  out = {}
  for start, x, index in _padded_batches(images, found, batch_size):
    counts = np.asarray(
        randomized.sample_counts(
            classifier.apply_fn,
            x,
            spec,
            jax.random.key(seed),
            noise=methods.method(method).noise_kind,
            num_samples=int(run["n"]),
            params=classifier.variables,
            row_ids=index,
        )
    )
    for j, idx in enumerate(found[start : start + batch_size]):
      out[int(idx)] = {"label": int(labels[start + j]), "counts": counts[j]}
  return out


def _statistical_mismatches(
    scan, rows, recounted, run, level: float
) -> tuple[list[str], set[int]]:
  """Each certified row's count of its class against n fresh draws: a
  two-sided Fisher exact test of equal probabilities, at `level` over all
  tested rows (Bonferroni); labels exactly."""
  col = {name: j for j, name in enumerate(scan.columns)}
  n, alpha = int(run["n"]), float(run["alpha"])
  tested = [
      idx
      for idx, (values, _) in rows.items()
      if values[col["predict"]] != results_format.ABSTAIN
  ]
  mismatches, differing = [], set()
  for idx, (values, line) in rows.items():
    got = recounted.get(idx)
    if got is None:
      differing.add(idx)
      mismatches.append(f"line {line} idx {idx}: not in the run's subset")
      continue
    if values[col["label"]] != got["label"]:
      differing.add(idx)
      mismatches.append(
          f"line {line} idx {idx}: label stored {values[col['label']]}, "
          f"dataset {got['label']}"
      )
    if idx not in tested:
      continue
    if "count_top" in col:
      stored = values[col["count_top"]]
    else:  # A file of an earlier version: the count behind p_lower.
      stored = int(
          clopper_pearson.counts_from_p_lower(
              [values[col["p_lower"]]], n, alpha
          )[0]
      )
    fresh = int(got["counts"][values[col["predict"]]])
    p_value = _fisher_exact([[stored, n - stored], [fresh, n - fresh]])
    if p_value < level / max(len(tested), 1):
      differing.add(idx)
      mismatches.append(
          f"line {line} idx {idx}: count of class {values[col['predict']]} "
          f"stored {stored}/{n}, {fresh}/{n} under fresh noise (Fisher p = "
          f"{p_value:.3g} < {level}/{len(tested)})"
      )
  return mismatches, differing


def _fisher_exact(table) -> float:
  """Fisher's exact test's two-sided p-value of a 2 x 2 table (scipy.stats
  is imported here: see `clopper_pearson.beta_quantile`)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  return float(stats.fisher_exact(table)[1])
