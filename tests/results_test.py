"""Tests of the per-image results files (dssn_jax/runs/results_*.py)."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dssn_jax.core import methods
from dssn_jax.reports import certified_runs
from dssn_jax.runs import results_format
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from dssn_jax.runs.results_writer import ResultsWriter
from tests.conftest import cpu_subprocess_env
from tests.conftest import REPO_ROOT
from tests.conftest import run_python

WRITER_LOOP = "tests.programs.results_writer_loop"
META = {
    "sigma": 0.5,
    "q": 255,
    "dataset": "cifar10",
    "checkpoint": "abc123",
    "subset": "test[:100]",
}


def dssn_row(idx, label=3, predict=3, steps=10, time_s=0.25):
  return {
      "idx": idx,
      "label": label,
      "predict": predict,
      "radius": steps / 255,
      "correct": int(predict == label),
      "time": time_s,
      "count_top": 100 + steps * 2,
      "count_runner_up": 100,
      "steps": steps,
  }


def dssn_rows(indices):
  # Values are a deterministic function of idx, so every row can be checked.
  return [
      dssn_row(
          i,
          label=i % 10,
          predict=(i % 10) if i % 7 else (i + 1) % 10,
          steps=i % 300,
          time_s=i / 1000,
      )
      for i in indices
  ]


def read_bytes(path):
  return Path(path).read_bytes()


def test_round_trip_rows_and_columns(tmp_path):
  path = tmp_path / "certify.tsv"
  rows = dssn_rows(range(5))
  with ResultsWriter(path, "dssn", META) as writer:
    assert writer.done_indices == frozenset()
    assert writer.write_rows(rows[:2]) == 2
    # A batch may also be columns of arrays, e.g. straight from a jitted
    # certifier.
    columns = {k: np.array([r[k] for r in rows[2:]]) for k in rows[0]}
    assert writer.write_rows(columns) == 3
    assert writer.done_indices == {0, 1, 2, 3, 4}
  header = read_bytes(path).split(b"\n")[0].decode().split("\t")
  assert header == [
      "idx",
      "label",
      "predict",
      "radius",
      "correct",
      "time",
      "count_top",
      "count_runner_up",
      "steps",
  ]
  out = results_reader.read_results(path)
  for k in rows[0]:
    np.testing.assert_array_equal(out[k], [r[k] for r in rows])
  # Radii survive at full precision (steps / 255 is not a short decimal).
  assert out["radius"].tolist() == [r["radius"] for r in rows]
  assert out["correct"].dtype == bool and out["idx"].dtype == np.int64
  meta = json.loads(results_metadata.metadata_path(path).read_text())
  assert meta["method"] == "dssn" and meta["run"] == META


def test_randomized_columns_and_abstention(tmp_path):
  path = tmp_path / "uniform.tsv"
  rows = [
      {
          "idx": 7,
          "label": 1,
          "predict": 1,
          "radius": 2 * np.sqrt(3) * (0.6 - 0.5),  # 2 lambda (p_lower - 1/2)
          "correct": 1,
          "time": 13.4,
          "p_lower": 0.6,
          "count_top": 60,
          "count_runner_up": 40,
          "predict_top2": 1,
          "p_b_upper": 0.4,
          "radius_top2": np.sqrt(3) * (0.6 - 0.4),  # lambda (p_a - p_b)
          "radius_box": np.inf,  # No image of the box changes the class.
      },
      {
          "idx": 3,
          "label": 2,
          "predict": results_format.ABSTAIN,
          "radius": 2 * np.sqrt(3) * (0.4 - 0.5),
          "correct": 0,
          "time": 13.5,
          "p_lower": 0.4,
          "count_top": 40,
          "count_runner_up": 60,
          "predict_top2": results_format.ABSTAIN,
          "p_b_upper": 0.6,
          "radius_top2": 0.0,
          "radius_box": 0.0,
      },
  ]
  with ResultsWriter(path, "uniform", {"sigma": 1.0}) as writer:
    writer.write_rows(rows)
    bad = dict(rows[1], idx=9, correct=1)  # An abstention is never correct.
    with pytest.raises(ValueError, match="never correct"):
      writer.write_rows([bad])
    with pytest.raises(ValueError, match="missing"):
      writer.write_rows([{k: v for k, v in rows[0].items() if k != "p_lower"}])
  out = results_reader.read_results(path)
  assert out["idx"].tolist() == [3, 7]  # Sorted by idx.
  assert out["predict"].tolist() == [-1, 1]
  assert out["p_lower"].tolist() == [0.4, 0.6]
  assert out["radius_box"].tolist() == [0.0, np.inf]  # inf round-trips.
  assert out["predict_top2"].tolist() == [-1, 1]
  assert list(out) == list(results_format.columns_for("uniform"))


def test_resume_skips_done_rows(tmp_path):
  path = tmp_path / "certify.tsv"
  with ResultsWriter(path, "dssn", META) as writer:
    writer.write_rows(dssn_rows(range(0, 6)))
  with ResultsWriter(path, "dssn", dict(META)) as writer:
    assert writer.done_indices == set(range(6))
    assert (
        writer.done_indices is writer.done_indices
    )  # Cached: cheap in a loop.
    todo = [i for i in range(10) if i not in writer.done_indices]
    assert todo == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="already in"):
      writer.write_rows(dssn_rows([5, 6]))
    writer.write_rows(dssn_rows(todo))
  assert results_reader.read_results(path)["idx"].tolist() == list(range(10))


@pytest.mark.parametrize(
    "tail",
    [
        b"6\t6\t6\t0.0392156862745098\t1\t0.0",  # Half a row, no newline.
        # Parses, no newline.
        b"6\t6\t6\t0.0392156862745098\t1\t0.006\t120\t100\t10",
        b"\x00" * 37,  # Unflushed file extension after a power loss.
    ],
)
def test_torn_last_line_is_repaired(tmp_path, tail):
  path = tmp_path / "certify.tsv"
  with ResultsWriter(path, "dssn", META) as writer:
    writer.write_rows(dssn_rows(range(6)))
  good = read_bytes(path)
  with open(path, "ab") as f:
    f.write(tail)
  # A reader skips the torn row and leaves the file alone.
  assert results_reader.read_results(path)["idx"].tolist() == list(range(6))
  assert read_bytes(path) == good + tail
  with ResultsWriter(path, "dssn", META) as writer:
    assert read_bytes(path) == good
    assert writer.done_indices == set(range(6))
    writer.write_rows(dssn_rows([6, 7]))
  out = results_reader.read_results(path)
  assert out["idx"].tolist() == list(range(8))
  assert out["steps"].tolist() == [r["steps"] for r in dssn_rows(range(8))]


@pytest.mark.parametrize(
    "tail",
    [
        b"6\t6\t6\t0.0392156862745098\t1\n",  # A row with missing fields.
        b"6\t6\t6\t0.0392156862745098\t1\n7\t7\t7\t0.03",  # And a torn row.
        b"not a row at all\n",
    ],
)
def test_complete_non_row_line_is_an_error_not_a_repair(tmp_path, tail):
  path = tmp_path / "certify.tsv"
  with ResultsWriter(path, "dssn", META) as writer:
    writer.write_rows(dssn_rows(range(6)))
  with open(path, "ab") as f:
    f.write(tail)
  before = read_bytes(path)
  with pytest.raises(ValueError, match="line 8 is corrupt, not a valid row"):
    results_reader.read_results(path)
  with pytest.raises(ValueError, match="line 8 is corrupt, not a valid row"):
    ResultsWriter(path, "dssn", META).open()
  assert read_bytes(path) == before  # Nothing deleted.


def test_rows_outside_the_run_subset_are_refused(tmp_path):
  path = tmp_path / "certify.tsv"
  meta = dict(META, start=0, skip=10, max_examples=4)
  with ResultsWriter(path, "dssn", meta) as writer:
    writer.write_rows(dssn_rows([0, 10, 20]))
    assert writer.line_of(20) == 4
  assert results_reader.read_results(path)["idx"].tolist() == [0, 10, 20]
  with open(path, "ab") as f:  # A valid-looking row of image 41.
    f.write(
        read_bytes(path)
        .splitlines(keepends=True)[-1]
        .replace(b"20\t", b"41\t", 1)
    )
  with pytest.raises(ValueError, match="line 5 has idx 41"):
    results_reader.read_results(path)
  assert results_reader.subset_contains(meta, 30)
  assert not results_reader.subset_contains(meta, 40)  # Past max_examples.
  assert not results_reader.subset_contains(meta, 15)


def test_torn_header_is_rewritten(tmp_path):
  path = tmp_path / "certify.tsv"
  with ResultsWriter(path, "dssn", META):
    pass
  header = read_bytes(path)
  path.write_bytes(header[:10])  # Killed while writing the header.
  with ResultsWriter(path, "dssn", META) as writer:
    assert writer.done_indices == frozenset()
    writer.write_rows(dssn_rows([0]))
  assert read_bytes(path).startswith(header)


def test_corruption_before_valid_rows_is_an_error(tmp_path):
  path = tmp_path / "certify.tsv"
  with ResultsWriter(path, "dssn", META) as writer:
    writer.write_rows(dssn_rows(range(3)))
  lines = read_bytes(path).split(b"\n")
  lines[2] = b"garbage"
  path.write_bytes(b"\n".join(lines))
  before = read_bytes(path)
  with pytest.raises(ValueError, match="line 3 is corrupt"):
    ResultsWriter(path, "dssn", META).open()
  with pytest.raises(ValueError, match="corrupt"):
    results_reader.read_results(path)
  assert read_bytes(path) == before


def test_metadata_mismatch_is_an_error_and_leaves_files_untouched(tmp_path):
  path = tmp_path / "certify.tsv"
  with ResultsWriter(path, "dssn", META) as writer:
    writer.write_rows(dssn_rows(range(3)))
  with open(path, "ab") as f:
    f.write(b"3\t3\t3\t0.1")  # A torn row: must survive a refused open.
  data, meta = read_bytes(path), read_bytes(
      results_metadata.metadata_path(path)
  )
  other = dict(META, sigma=0.75, checkpoint="def456")
  with pytest.raises(ValueError) as e:
    ResultsWriter(path, "dssn", other).open()
  message = str(e.value)
  assert "sigma" in message and "checkpoint" in message and "0.75" in message
  assert "q:" not in message  # Only the mismatching fields are named.
  assert "another workdir" in message and "delete" in message
  with pytest.raises(ValueError, match="method"):
    ResultsWriter(path, "uniform", META).open()
  with pytest.raises(ValueError, match="extra"):
    ResultsWriter(path, "dssn", dict(META, extra=1)).open()
  assert read_bytes(path) == data
  assert read_bytes(results_metadata.metadata_path(path)) == meta
  # A data file without its sidecar cannot be checked: also an error.
  results_metadata.metadata_path(path).unlink()
  with pytest.raises(ValueError, match="metadata"):
    ResultsWriter(path, "dssn", META).open()
  assert read_bytes(path) == data


def test_metadata_is_compared_after_json_round_trip(tmp_path):
  path = tmp_path / "certify.tsv"
  meta = {"sigma": np.float64(0.5), "shape": (32, 32, 3), "q": np.int64(255)}
  with ResultsWriter(path, "dssn", meta) as writer:
    writer.write_rows(dssn_rows([0]))
  with ResultsWriter(
      path, "dssn", {"sigma": 0.5, "shape": [32, 32, 3], "q": 255}
  ) as w:
    assert w.done_indices == {0}


def test_duplicate_idx_is_an_error(tmp_path):
  path = tmp_path / "certify.tsv"
  with ResultsWriter(path, "dssn", META) as writer:
    with pytest.raises(ValueError, match="Duplicate idx within the batch"):
      writer.write_rows(dssn_rows([0, 1, 1]))
    assert writer.done_indices == frozenset()  # Nothing of the batch written.
    writer.write_rows(dssn_rows([0, 1]))
    with pytest.raises(ValueError, match="already in"):
      writer.write_rows(dssn_rows([2, 1]))
  assert results_reader.read_results(path)["idx"].tolist() == [0, 1]


def test_second_writer_on_same_file_is_refused(tmp_path):
  path = tmp_path / "certify.tsv"
  with ResultsWriter(path, "dssn", META):
    with pytest.raises(ValueError, match="another process"):
      ResultsWriter(path, "dssn", META).open()


def test_multi_file_merge(tmp_path):
  paths = [tmp_path / "certify.tsv", tmp_path / "certify.process1.tsv"]
  for p, indices in zip(paths, [range(0, 20, 2), range(1, 20, 2)]):
    with ResultsWriter(
        p, "dssn", dict(META, process_index=paths.index(p))
    ) as w:
      w.write_rows(dssn_rows(indices))
  out = results_reader.read_results(paths)
  assert out["idx"].tolist() == list(range(20))
  assert out["steps"].tolist() == [r["steps"] for r in dssn_rows(range(20))]
  # Grouped by metadata into one run; per-process fields may differ.
  runs = certified_runs.load_result_runs(
      certified_runs.expand_result_paths(str(tmp_path))
  )
  assert list(runs) == ["cifar_dssn_0.5"]
  assert runs["cifar_dssn_0.5"].num_images == 20
  # The same idx in two files: an error naming both.
  dup = tmp_path / "dup" / "certify.process2.tsv"
  with ResultsWriter(dup, "dssn", META) as w:
    w.write_rows(dssn_rows([4]))
  with pytest.raises(ValueError, match="idx 4 is in both"):
    results_reader.read_results(paths + [dup])
  # Files of one (method, sigma) but of different checkpoints are not merged.
  other = tmp_path / "other" / "certify.tsv"
  with ResultsWriter(other, "dssn", dict(META, checkpoint="zzz")) as w:
    w.write_rows(dssn_rows([40]))
  with pytest.raises(ValueError, match="checkpoint"):
    certified_runs.load_result_runs(paths + [other])


def test_certified_accuracy_counts_abstentions_as_wrong():
  radius = np.array([0.0, 0.5, 1.0, 2.0, 3.0, -0.2, 0.7])
  correct = np.array([1, 1, 1, 0, 1, 1, 0], bool)
  predict = np.array([1, 1, 1, 2, 1, 1, -1])
  acc = results_reader.certified_accuracy(
      radius, correct, [0.0, 0.5, 1.0, 2.5, 3.5]
  )
  # A negative radius (the reference's abstention) never counts; r is inclusive.
  np.testing.assert_allclose(acc, np.array([4, 3, 2, 1, 0]) / 7)
  assert results_reader.certified_accuracy(
      radius, correct, 1.0
  ) == pytest.approx(2 / 7)
  # predict == -1 never counts even if `correct` claims otherwise.
  bad_correct = correct.copy()
  bad_correct[6] = True
  assert results_reader.certified_accuracy(
      radius, bad_correct, 0.5, predict=predict
  ) == (pytest.approx(3 / 7))
  with pytest.raises(ValueError):
    results_reader.certified_accuracy(radius, correct, [-1.0])


@pytest.mark.slow
def test_results_modules_import_no_jax_or_tensorflow():
  """Reading and writing results needs NumPy alone: loaded without the
  package's __init__ (which imports JAX), the results modules and what they
  import bring in no JAX, TensorFlow or matplotlib."""
  code = (
      f"from {WRITER_LOOP} import load_results_modules; "
      "load_results_modules(); import sys; "
      "import dssn_jax.runs.results_format, dssn_jax.runs.results_metadata; "
      "heavy = [m for m in sys.modules "
      "if m.split('.')[0] in ('jax', 'tensorflow', 'matplotlib')]; "
      "assert not heavy, heavy; "
      "assert 'dssn_jax.runs.results_writer' in sys.modules; print('light')"
  )
  result = run_python(["-c", code], timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "light"


@pytest.mark.slow
def test_sigkill_while_writing_leaves_a_repairable_file(tmp_path):
  path = tmp_path / "certify.tsv"
  n, batch = 40_000, 2_000
  cmd = [sys.executable, "-m", WRITER_LOOP, str(path), str(n), str(batch)]
  env = cpu_subprocess_env()
  rng = np.random.default_rng(0)
  kills, torn = 0, 0
  for _ in range(30):
    size_before = path.stat().st_size if path.exists() else 0
    proc = subprocess.Popen(
        cmd + ["slow"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Wait for the file to grow, then kill at a random moment while writing.
    deadline = time.monotonic() + 30
    while (not path.exists() or path.stat().st_size <= size_before) and (
        proc.poll() is None and time.monotonic() < deadline
    ):
      time.sleep(0.002)
    time.sleep(float(rng.uniform(0.0, 0.1)))
    if proc.poll() is not None:
      break  # Finished every row before the kill.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kills += 1
    torn += not read_bytes(path).endswith(b"\n")
    # A reader never sees a torn or duplicated row.
    out = results_reader.read_results(path)
    assert len(np.unique(out["idx"])) == out["idx"].size
    np.testing.assert_array_equal(out["steps"], out["idx"] % 300)
    if kills >= 3 and torn:
      break
  assert kills >= 3 and torn, (kills, torn)
  # The next writer repairs the file and finishes the run.
  proc = run_python(cmd[1:] + ["fast"], env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "finished" in proc.stdout
  data = read_bytes(path)
  out = results_reader.read_results(path)
  idx = np.arange(n)
  np.testing.assert_array_equal(out["idx"], idx)
  np.testing.assert_array_equal(out["steps"], idx % 300)
  np.testing.assert_array_equal(out["radius"], (idx % 300) / 255)
  np.testing.assert_array_equal(out["time"], idx / 1000)
  assert data.endswith(b"\n")
  assert (
      data.count(b"\n") == n + 1
  )  # Header + one line per image, no leftovers.


def test_results_files_know_exactly_the_methods_of_the_table(tmp_path):
  """One list of methods (core/methods.py): a results file of each method
  has the base columns and that method's result columns, each with a type,
  writes and reads back; any other name is refused."""
  assert not results_format.INT_COLUMNS & results_format.FLOAT_COLUMNS
  for name in methods.METHODS:
    columns = results_format.columns_for(name)
    assert columns == (
        results_format.BASE_COLUMNS + methods.method(name).result_columns
    )
    typed = results_format.INT_COLUMNS | results_format.FLOAT_COLUMNS
    assert set(columns) <= typed, set(columns) - typed
    path = tmp_path / f"{name}.tsv"
    with ResultsWriter(path, name, META):
      pass
    assert tuple(results_reader.read_results(path)) == columns
    assert results_metadata.read_metadata(path)["method"] == name
  with pytest.raises(ValueError, match="Unknown method 'gaussian'"):
    results_format.columns_for("gaussian")
  with pytest.raises(ValueError, match="Unknown method"):
    ResultsWriter(tmp_path / "g.tsv", "gaussian", META)
  header = results_format.BASE_COLUMNS + ("votes",)
  (tmp_path / "other.tsv").write_bytes(results_format.header(header))
  with pytest.raises(ValueError, match="Unrecognised results header"):
    results_reader.read_results(tmp_path / "other.tsv")
