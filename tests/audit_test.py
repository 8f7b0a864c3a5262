"""Tests of `python -m experiments.audit` (dssn_jax/runs/audit.py): results
re-verified against their checkpoint and dataset."""

import json
import os
import shutil

import pytest

from dssn_jax.runs import audit
from dssn_jax.runs import results_format
from dssn_jax.runs import results_integrity
from dssn_jax.runs import results_metadata
from tests.conftest import run_python

pytestmark = pytest.mark.slow  # Trains the smoke run (once per session).


def copy_run(smoke_run, tmp_path):
  target = str(tmp_path / "run")
  shutil.copytree(smoke_run.workdir, target)
  return target


def edit(path, line, sign=True, **columns):
  """Edits a row; with `sign`, also recomputes the digest as a careful
  forger would: the file then passes every reader's check, and only the
  audit can tell. Returns the row's fields before the edit, by column."""
  lines = open(path).read().splitlines(keepends=True)
  header = lines[0].rstrip("\n").split("\t")
  fields = lines[line - 1].rstrip("\n").split("\t")
  before = dict(zip(header, fields))
  for column, value in columns.items():
    fields[header.index(column)] = str(value)
  lines[line - 1] = "\t".join(fields) + "\n"
  with open(path, "w") as f:
    f.write("".join(lines))
  if sign:
    with open(path, "rb") as f:
      scan = results_format.scan(f.read(), path)
    meta_path = results_metadata.metadata_path(path)
    meta = json.loads(meta_path.read_text())
    meta["digest"]["row_sha256"] = results_integrity.row_hashes(scan.rows)
    meta_path.write_text(json.dumps(meta))
  return {
      k: int(v) if k in results_format.INT_COLUMNS else float(v)
      for k, v in before.items()
  }


def other_label(row):
  """A label that flips the row's `correct`, and that `correct`."""
  if row["predict"] == row["label"]:
    return (row["label"] + 1) % 10, 0
  return row["predict"], 1


@pytest.mark.parametrize("method", ["dssn", "uniform"])
def test_audit_recertifies_every_row_exactly(smoke_run, method):
  rows = smoke_run.config.certify.max_examples
  report = audit.audit(
      os.path.join(smoke_run.workdir, f"certify_{method}.tsv"),
      data_dir=smoke_run.data_dir,
      batch_size=rows,
  )
  assert report.ok, report.format()
  assert report.rows == rows
  assert report.audited == list(range(report.rows))
  assert f"{report.rows} match, 0 differ" in report.format()
  if method != "dssn":
    return
  sampled = audit.audit(
      os.path.join(smoke_run.workdir, f"certify_{method}.tsv"),
      data_dir=smoke_run.data_dir,
      sample=2,
      seed=3,
      batch_size=rows,  # The programs compiled above.
  )
  assert sampled.ok and len(sampled.audited) == 2
  assert "2 rows drawn with seed 3" in sampled.format()


def test_audit_detects_an_edited_count_and_label(smoke_run, tmp_path):
  workdir = copy_run(smoke_run, tmp_path)
  path = os.path.join(workdir, "certify_dssn.tsv")
  row = edit(path, 3)  # Nothing changed yet.
  top, runner_up = row["count_top"], row["count_runner_up"]
  steps = (top - runner_up - 4) // 2  # Two votes moved to the runner-up.
  edit(
      path,
      3,
      count_top=top - 2,
      count_runner_up=runner_up + 2,
      steps=steps,
      radius=repr(steps / smoke_run.config.q),
  )
  label, correct = other_label(edit(path, 4))
  edit(path, 4, label=label, correct=correct)
  report = audit.audit(
      path,
      data_dir=smoke_run.data_dir,
      batch_size=smoke_run.config.certify.max_examples,
  )
  assert report.integrity_error is None  # The forger passes the reader...
  assert not report.ok  # ...but not the audit.
  text = report.format()
  assert f"line 3 idx 1: count_top stored {top - 2}, recomputed {top}" in text
  assert f"line 4 idx 2: label stored {label}, recomputed" in text
  assert "recertified 6 of 6 rows: 4 match, 2 differ" in text
  # A naive edit (digest not recomputed) fails the reader's checks too; the
  # CLI prints both and exits 1.
  label, correct = other_label(edit(path, 5))
  edit(path, 5, sign=False, label=label, correct=correct)
  result = run_python(
      [
          "-m",
          "experiments.audit",
          f"--results={path}",
          f"--data_dir={smoke_run.data_dir}",
      ],
      timeout=300,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert "file checks (run metadata, digest): FAILED" in result.stdout
  assert "line 5 (idx 3) does not match its digest" in result.stdout
  assert "MISMATCH line 3 idx 1: count_top" in result.stdout
  assert "recertified 6 of 6 rows: 3 match, 3 differ" in result.stdout


def test_audit_with_fresh_noise_tests_the_counts(smoke_run, tmp_path):
  workdir = copy_run(smoke_run, tmp_path)
  path = os.path.join(workdir, "certify_uniform.tsv")
  rows = smoke_run.config.certify.max_examples
  report = audit.audit(
      path, data_dir=smoke_run.data_dir, batch_size=rows, fresh_noise_seed=1
  )
  assert report.ok, report.format()
  assert "two-sided Fisher exact test at level 0.001" in report.format()
  certified = [
      line
      for line in range(2, rows + 2)
      if edit(path, line)["predict"] != results_format.ABSTAIN
  ]
  assert certified, "the smoke classifier certifies some image"
  edit(path, certified[0], count_top=0)
  report = audit.audit(
      path, data_dir=smoke_run.data_dir, batch_size=rows, fresh_noise_seed=1
  )
  assert not report.ok
  assert f"MISMATCH line {certified[0]} idx {certified[0] - 2}: count of" in (
      report.format()
  )
