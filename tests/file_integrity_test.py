"""Edited and corrupted results files are refused (runs/results_integrity.py).

The edits of issue 24's case 4, on files like a certification run's: every
one is refused by read_results (what analyze and the summaries read) and by
a resuming ResultsWriter, with a line naming the file and the line.
"""

import copy
import json
import math
import os
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dssn_jax.core import box
from dssn_jax.core import clopper_pearson
from dssn_jax.core import dssn
from dssn_jax.core import smoothing
from dssn_jax.reports import certified_runs
from dssn_jax.runs import results_format
from dssn_jax.runs import results_integrity
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from dssn_jax.runs import run_files
from dssn_jax.runs.results_writer import ResultsWriter
from dssn_jax.training import checkpoints
from dssn_jax.training import classifier
from dssn_jax.training import run_config

SPEC = smoothing.SmoothingSpec(0.5, 255)  # L = 441.
RUN = {
    "dataset": "fashion_mnist",
    "sigma": SPEC.sigma,
    "q": SPEC.q,
    "levels": SPEC.levels,
    "start": 0,
    "skip": 1,
    "max_examples": 100,
}


def dssn_rows(n, seed=0):
  """Rows of n images as certify_batch makes them, from random counts."""
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(SPEC.levels, rng.dirichlet(np.ones(10) * 0.3), n)
  pred, steps, radius = dssn.certify_from_counts(counts, SPEC)
  ordered = np.sort(counts, axis=1)
  label = np.where(np.arange(n) % 3 == 0, (pred + 1) % 10, pred)
  return {
      "idx": np.arange(n),
      "label": label,
      "predict": pred,
      "radius": radius,
      "correct": (pred == label).astype(int),
      "time": np.full(n, 0.5),
      "count_top": ordered[:, -1],
      "count_runner_up": ordered[:, -2],
      "steps": steps,
  }


@pytest.fixture
def results(tmp_path):
  """A DSSN results file of 12 rows, in two batches."""
  path = tmp_path / "certify_dssn.tsv"
  rows = dssn_rows(12)
  with ResultsWriter(path, "dssn", RUN) as writer:
    writer.write_rows({k: v[:5] for k, v in rows.items()})
    writer.write_rows({k: v[5:] for k, v in rows.items()})
  return path


def lines_of(path):
  return path.read_text().splitlines(keepends=True)


def edit_column(path, line, column, value):
  """Sets one field of a line (1-based, header included), as by hand."""
  lines = lines_of(path)
  header = lines[0].rstrip("\n").split("\t")
  fields = lines[line - 1].rstrip("\n").split("\t")
  fields[header.index(column)] = str(value)
  lines[line - 1] = "\t".join(fields) + "\n"
  path.write_text("".join(lines))


def edit_meta(path, **run):
  meta_path = results_metadata.metadata_path(path)
  meta = json.loads(meta_path.read_text())
  meta["run"].update(run)
  meta_path.write_text(json.dumps(meta))


def refused_everywhere(path, match):
  """read_results, a resuming writer and the run's summary all refuse."""
  before = path.read_bytes()
  with pytest.raises(ValueError, match=match) as e:
    results_reader.read_results(path)
  assert str(path) in str(e.value)
  with pytest.raises(ValueError, match=match):
    ResultsWriter(path, "dssn", RUN).open()
  with pytest.raises(ValueError, match=match):
    run_files.summarize(path, (0.0, 0.5))
  assert path.read_bytes() == before  # Nothing repaired or truncated.


def test_an_untouched_file_reads(results):
  rows = results_reader.read_results(results)
  assert rows["idx"].tolist() == list(range(12))
  meta = results_metadata.read_metadata(results)
  assert meta["format_version"] == 2
  assert meta["digest"]["rows"] == meta["digest"]["committed"] == 12
  with ResultsWriter(results, "dssn", RUN) as writer:  # Resumes.
    assert writer.num_rows == 12


def test_radius_edited_with_steps_kept_is_refused(results):
  for line in range(2, 14):
    edit_column(results, line, "radius", 9.0)
  refused_everywhere(results, r"line 2: radius 9.0 is not steps / q")


def test_count_top_beyond_the_levels_is_refused(results):
  good = results.read_bytes()
  edit_column(results, 4, "count_top", 100000)
  refused_everywhere(results, "line 4 is corrupt.*steps=")
  results.write_bytes(good)
  # Edited with steps and radius to match: the counts exceed L.
  lines = lines_of(results)
  runner_up = int(lines[2].split("\t")[7])
  steps = (100000 - runner_up) // 2
  edit_column(results, 3, "count_top", 100000)
  edit_column(results, 3, "steps", steps)
  edit_column(results, 3, "radius", repr(steps / 255))
  refused_everywhere(results, "line 3: count_top 100000 .* L = 441")


def test_edited_label_and_correct_are_refused_by_the_digest(results):
  rows = results_reader.read_results(results)
  wrong = int(np.flatnonzero(~rows["correct"])[0])
  line = wrong + 2
  edit_column(results, line, "label", rows["predict"][wrong])
  edit_column(results, line, "correct", 1)
  refused_everywhere(results, f"line {line} .*does not match its digest")


def test_sigma_edited_in_the_metadata_is_refused(results):
  edit_meta(results, sigma=2.0)
  with pytest.raises(ValueError, match="levels=441 but sigma=2.0"):
    results_reader.read_results(results)
  with pytest.raises(ValueError, match="levels=441 but sigma=2.0"):
    certified_runs.load_result_runs([results])  # What analyze reads.
  # sigma and levels edited together: the digest of the run metadata.
  edit_meta(results, sigma=2.0, levels=1766)
  with pytest.raises(ValueError, match="run metadata differ"):
    results_reader.read_results(results)


def test_rows_added_or_deleted_by_hand_are_refused(results):
  good = results.read_bytes()
  lines = lines_of(results)
  extra = lines[-1].split("\t")
  extra[0] = "12"
  results.write_text("".join(lines) + "\t".join(extra))
  refused_everywhere(results, "line 14 has no digest")
  results.write_bytes(good)
  results.write_text("".join(lines[:-2]))  # The last two rows deleted.
  refused_everywhere(results, "line 12: missing")
  results.write_text("".join(lines[:4] + lines[5:]))  # A middle row.
  refused_everywhere(results, "line 5 .*does not match its digest")


def test_a_kill_between_digest_and_rows_is_no_edit(results):
  """The digest of a batch is written before its rows: a kill in between
  leaves a digest of rows the file lacks, which a reader accepts and the
  next writer trims."""
  rows = dssn_rows(14)
  with ResultsWriter(results, "dssn", RUN) as writer:
    writer._write_all = lambda fd, data: None  # Killed before the rows.
    writer.write_rows({k: v[12:] for k, v in rows.items()})
    writer._broken = True  # pylint: disable=protected-access
  assert results_metadata.read_metadata(results)["digest"]["rows"] == 14
  assert results_reader.read_results(results)["idx"].size == 12
  with ResultsWriter(results, "dssn", RUN) as writer:
    assert writer.num_rows == 12
    writer.write_rows({k: v[12:] for k, v in rows.items()})
  assert results_reader.read_results(results)["idx"].size == 14


def test_format_version_1_is_read_cross_checked_and_adopted(results, caplog):
  meta_path = results_metadata.metadata_path(results)
  meta = json.loads(meta_path.read_text())
  del meta["digest"]
  meta["format_version"] = 1
  meta_path.write_text(json.dumps(meta))
  good = results.read_bytes()
  with caplog.at_level("WARNING"):
    assert results_reader.read_results(results)["idx"].size == 12
  assert "no digest recorded" in caplog.text
  edit_column(results, 2, "radius", 9.0)  # Cross-checks still apply.
  with pytest.raises(ValueError, match="line 2: radius 9.0"):
    results_reader.read_results(results)
  results.write_bytes(good)
  with ResultsWriter(results, "dssn", RUN):  # Resuming starts a digest.
    pass
  meta = results_metadata.read_metadata(results)
  assert meta["format_version"] == 2
  assert meta["digest"]["unverified_rows"] == 12
  edit_column(results, 5, "label", 9 - int(lines_of(results)[4].split()[1]))
  with pytest.raises(ValueError, match="line 5"):
    results_reader.read_results(results)


def randomized_rows(counts, n, alpha):
  """Rows of a randomized run with these estimation counts (selected class
  0), as certify_batch makes them, in the columns of the uniform method."""
  counts = np.asarray(counts)
  selected = np.zeros(len(counts), np.int64)
  p_lower = clopper_pearson.clopper_pearson_lower(counts[:, 0], n, alpha)
  pred = np.where(p_lower > 0.5, 0, -1)
  top2 = box.certify_box(
      counts,
      selected,
      np.full((len(counts), 2, 2, 1), 0.5),
      n=n,
      alpha=alpha,
      lam=SPEC.lam,
  )
  rows = {
      "idx": np.arange(len(counts)),
      "label": np.zeros(len(counts), np.int64),
      "predict": pred,
      "radius": 2 * SPEC.lam * (p_lower - 0.5),
      "correct": (pred == 0).astype(int),
      "time": np.ones(len(counts)),
      "p_lower": p_lower,
      "count_top": counts[:, 0],
      "count_runner_up": box.top_two_counts(counts, selected)[1],
      "predict_top2": top2.pred,
      "p_b_upper": top2.p_b_upper,
      "radius_top2": top2.radius_top2,
      "radius_box": top2.radius_box,
  }
  return {k: rows[k] for k in results_format.columns_for("uniform")}


def test_randomized_rows_are_cross_checked(tmp_path):
  n, alpha = 1000, 0.001
  run = dict(RUN, n=n, alpha=alpha, n0=10, seed=0)
  counts = [[990, 10], [700, 300], [400, 600], [520, 400]]
  path = tmp_path / "certify_uniform.tsv"
  rows = randomized_rows(counts, n, alpha)
  with ResultsWriter(path, "uniform", run) as writer:
    writer.write_rows(rows)
    bad = {k: v[:1] for k, v in randomized_rows([[900, 100]], n, alpha).items()}
    bad["idx"], bad["p_lower"] = [9], [0.85]
    bad["radius"] = [2 * SPEC.lam * 0.35]
    with pytest.raises(ValueError, match="no Clopper-Pearson bound"):
      writer.write_rows(bad)
  assert results_reader.read_results(path)["predict"].tolist() == list(
      rows["predict"]
  )
  good = path.read_bytes()
  edit_column(path, 3, "radius", 2.0)
  with pytest.raises(ValueError, match="line 3: radius 2.0 is not 2 lambda"):
    results_reader.read_results(path)
  path.write_bytes(good)
  edit_column(path, 3, "predict", -1)  # Abstaining at p_lower > 1/2.
  edit_column(path, 3, "correct", 0)
  with pytest.raises(ValueError, match="line 3: predict -1 .*abstains exactly"):
    results_reader.read_results(path)
  path.write_bytes(good)
  edit_column(path, 2, "count_top", 985)  # Not the count behind p_lower.
  with pytest.raises(ValueError, match="line 2: p_lower .* count_top 985"):
    results_reader.read_results(path)


def test_levels_agree_with_the_smoothing_spec():
  for sigma in np.geomspace(0.002, 5.0, 400):
    for q in (1, 7, 255, 256):
      if 2 * sigma * math.sqrt(3) * q < 1:
        continue
      spec = smoothing.SmoothingSpec(float(sigma), q)
      assert results_integrity.levels(spec.sigma, q) == spec.levels
  for levels in range(1, 600):  # sigma = L / (2 sqrt(3) q), float error.
    sigma = levels / (2 * math.sqrt(3) * 255)
    assert results_integrity.levels(sigma, 255) == levels


# --------------------------------------------------------------------------
# Checkpoints (training/checkpoints.py): issue 24 case 5.


def copy_workdir(smoke_run, tmp_path):
  target = str(tmp_path / "run")
  shutil.copytree(smoke_run.workdir, target)
  return target


def flip_bytes(step_dir, count=64):
  """Flips `count` bytes in the middle of the largest file of a step's
  state (its array data)."""
  files = [p for p in pathlib.Path(step_dir, "state").rglob("*") if p.is_file()]
  data_file = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(data_file.read_bytes())
  middle = len(data) // 2
  for i in range(middle, middle + count):
    data[i] ^= 0xFF
  data_file.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_corrupted_checkpoint_is_refused(smoke_run, tmp_path):
  workdir = copy_workdir(smoke_run, tmp_path)
  checkpointer = checkpoints.Checkpointer(workdir, create=False)
  step = checkpointer.latest_step()
  step_dir = checkpointer.step_dir(step)
  checkpointer.close()
  assert checkpoints.load_classifier(workdir).step == step  # Verified.
  flip_bytes(step_dir)
  with pytest.raises(ValueError, match=f"Delete {step_dir} to fall back"):
    checkpoints.load_classifier(workdir)
  with pytest.raises(ValueError, match=f"Delete {step_dir} to fall back"):
    classifier.train_and_evaluate(smoke_run.config, workdir)  # Resumes.


@pytest.mark.slow
def test_checkpoints_without_checksums_or_with_nan(smoke_run, tmp_path, caplog):
  workdir = copy_workdir(smoke_run, tmp_path)
  checkpointer = checkpoints.Checkpointer(workdir, create=False)
  step = checkpointer.latest_step()
  state = checkpointer.restore(step=step)
  metadata = checkpointer.metadata(step)
  checkpointer.close()
  # Saved by an earlier version: no checksums item; still restored.
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "checksums"))
  with caplog.at_level("WARNING"):
    assert checkpoints.load_classifier(workdir).step == step
  assert "no checksums" in caplog.text
  # Non-finite parameters: never saved, and refused on restore.
  leaves, treedef = jax.tree.flatten(state["params"])
  leaves[0] = np.full_like(leaves[0], np.nan)
  nan_state = dict(state, params=jax.tree.unflatten(treedef, leaves))
  checkpointer = checkpoints.Checkpointer(workdir)
  with pytest.raises(ValueError, match="non-finite values.*diverged"):
    checkpointer.save(step + 1, nan_state, metadata)
  manager = ocp.CheckpointManager(checkpointer.directory)
  manager.save(  # As an earlier version saved it.
      step + 1,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(nan_state),
          smoothing=ocp.args.JsonSave(metadata),
      ),
  )
  manager.wait_until_finished()
  manager.close()
  checkpointer.close()
  with pytest.raises(ValueError, match=f"step {step + 1} holds non-finite"):
    checkpoints.load_classifier(workdir)


# --------------------------------------------------------------------------
# Resumed training under other settings (training/run_config.py): case 6.


@pytest.mark.slow
def test_resumed_training_refuses_changed_settings(smoke_run, tmp_path):
  workdir = copy_workdir(smoke_run, tmp_path)
  trained = run_config.read_history(workdir)
  assert len(trained) == 1 and trained[0]["step"] == 0
  for field, value in (("learning_rate", 0.5), ("batch_size", 4), ("seed", 7)):
    config = copy.deepcopy(smoke_run.config)
    config[field] = value
    with pytest.raises(
        ValueError,
        match=f"other settings.*{field}: .* then, {value!r} now.*"
        "allow_changed_config=True",
    ):
      classifier.train_and_evaluate(config, workdir)
  assert run_config.read_history(workdir) == trained  # Nothing overwritten.
  config = copy.deepcopy(smoke_run.config)
  config.certify.method = "uniform"  # Not a training setting.
  config.learning_rate = 0.5
  config.allow_changed_config = True
  classifier.train_and_evaluate(config, workdir)
  history = run_config.read_history(workdir)
  assert history[0] == trained[0]  # The original settings are kept...
  assert history[1]["changes"] == [  # ...and the change recorded.
      f"learning_rate: {smoke_run.config.learning_rate!r} then, 0.5 now"
  ]
  assert history[1]["step"] == trained_steps(smoke_run.config)


def trained_steps(config):
  return config.num_epochs * config.steps_per_epoch
