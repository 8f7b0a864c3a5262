"""Every bad input to the command line ends in one line naming the fix.

The cases of issue 13's table: integer sentinels, a missing data_dir, a
read-only or file workdir, rows outside the requested subset, a complete
non-row line, imagenet2012 without its tars, TensorFlow's start-up lines.
"""

import errno
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from configs import fashion_mnist as fashion_mnist_config
from dssn_jax.core import smoothing
from dssn_jax.data import eval_input
from dssn_jax.reports import analyze
from dssn_jax.runs import certify_workdir
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from dssn_jax.runs import results_writer
from dssn_jax.runtime import config_checks
import experiments
from tests import certify_workdir_test

REPO = pathlib.Path(__file__).parents[1]


def entry_point(module, *flags):
  """Runs `python -m experiments.<module>`; returns the CompletedProcess."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # The entry point's own default.
  return subprocess.run(
      [sys.executable, "-m", f"experiments.{module}", *flags],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )


def assert_one_line_error(run, *fragments):
  assert run.returncode == 1, run.stderr[-2000:]
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1, run.stderr  # No TF start-up lines, no traceback.
  assert lines[0].startswith("error: ")
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.fixture(name="workdir")
def fixture_workdir(tmp_path, fashion_mnist_data_dir):
  workdir = str(tmp_path / "run")
  certify_workdir_test.save_untrained_checkpoint(
      fashion_mnist_config.get_config("smoke"), workdir
  )
  return workdir


def smoke_config(data_dir, **certify):
  config = fashion_mnist_config.get_config("smoke")
  config.data_dir = data_dir
  config.certify.update(certify)
  return config


@pytest.mark.parametrize(
    "field, value",
    [
        ("certify.max_examples", -5),
        ("certify.max_examples", 0),
        ("certify.chunk_size", -2),
        ("steps_per_epoch", 0),
        ("eval_max_examples", -3),
        ("certify.batch_size", 0),
        ("certify.start", -1),
    ],
)
def test_integer_fields_accept_only_documented_values(field, value):
  config = fashion_mnist_config.get_config("smoke")
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=f"config.{field} must be"):
    config_checks.check_integer_fields(config)
  fine = fashion_mnist_config.get_config("smoke")
  config_checks.check_integer_fields(fine)


@pytest.mark.slow
def test_cli_sentinel_missing_data_dir_and_file_workdir(
    tmp_path, workdir, fashion_mnist_data_dir
):
  run = entry_point(
      "certify",
      "--config=configs/fashion_mnist.py:smoke",
      f"--workdir={workdir}",
      f"--config.data_dir={fashion_mnist_data_dir}",
      "--config.certify.max_examples=-5",
  )
  assert_one_line_error(run, "config.certify.max_examples must be -1")

  missing = tmp_path / "nonexistent"
  run = entry_point(
      "certify",
      "--config=configs/fashion_mnist.py:smoke",
      f"--workdir={workdir}",
      f"--config.data_dir={missing}",
  )
  assert_one_line_error(run, "does not exist", "mkdir -p")
  assert not missing.exists()  # Nothing prepared there.

  a_file = tmp_path / "a_file"
  a_file.write_text("not a workdir")
  run = entry_point(
      "train", "--config=configs/fashion_mnist.py:smoke", f"--workdir={a_file}"
  )
  assert_one_line_error(run, "is a file, not a directory")


def test_imagenet_without_tars_says_where_they_go(tmp_path):
  with pytest.raises(
      FileNotFoundError, match="ILSVRC2012_img_train.tar.*downloads/manual"
  ):
    eval_input.num_examples_in_subset("imagenet2012", data_dir=tmp_path)


def read_only_os_open(real_open):
  """os.open that fails like a read-only file system for writing."""

  def fake_open(path, flags, *args, **kwargs):
    if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
      raise OSError(errno.EROFS, "Read-only file system", str(path))
    return real_open(path, flags, *args, **kwargs)

  return fake_open


def test_read_only_workdir(workdir, fashion_mnist_data_dir, monkeypatch):
  config = smoke_config(fashion_mnist_data_dir, max_examples=3)
  done = certify_workdir.certify_workdir(config, workdir)
  monkeypatch.setattr(results_writer.os, "open", read_only_os_open(os.open))
  # Every row done: summarized although nothing can be written.
  summary = certify_workdir.certify_workdir(config, workdir)
  assert summary["images"] == 3
  assert summary["clean_accuracy"] == done["clean_accuracy"]
  # Rows missing: an error that says what to do, nothing written.
  path = pathlib.Path(workdir) / "certify_dssn.tsv"
  path.write_bytes(b"".join(path.read_bytes().splitlines(True)[:-1]))
  # As a run killed before its last row: the digest records it, unwritten.
  meta = results_metadata.read_metadata(path)
  meta["digest"]["committed"] = 2
  results_metadata.metadata_path(path).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="1 of the requested images.*writable"):
    certify_workdir.certify_workdir(config, workdir)
  monkeypatch.undo()
  fresh = str(pathlib.Path(workdir).parent / "fresh")
  shutil.copytree(
      pathlib.Path(workdir) / "checkpoints", pathlib.Path(fresh) / "checkpoints"
  )
  monkeypatch.setattr(results_writer.os, "open", read_only_os_open(os.open))
  with pytest.raises(ValueError, match="not writable.*writable copy"):
    certify_workdir.certify_workdir(config, fresh)


def test_rows_outside_the_subset_stop_the_run(workdir, fashion_mnist_data_dir):
  config = smoke_config(fashion_mnist_data_dir, max_examples=4)
  certify_workdir.certify_workdir(config, workdir)
  path = pathlib.Path(workdir) / "certify_dssn.tsv"
  lines = path.read_bytes().splitlines(keepends=True)
  # A valid-looking row whose image is inside the subset's rule (start 0,
  # skip 1) but past max_examples, and one of another image of the split.
  path.write_bytes(b"".join(lines[:-1]))  # Drop image 3's row ...
  extra = lines[-1].replace(b"3\t", b"41\t", 1)
  with open(path, "ab") as f:
    f.write(extra)  # ... and append image 41's.
  with pytest.raises(ValueError, match="line 5 has idx 41"):
    certify_workdir.certify_workdir(config, workdir)
  with pytest.raises(ValueError, match="line 5 has idx 41"):
    results_reader.read_results(path)  # What analyze reads.


def test_complete_non_row_line_stops_the_run(workdir, fashion_mnist_data_dir):
  config = smoke_config(fashion_mnist_data_dir, max_examples=2)
  certify_workdir.certify_workdir(config, workdir)
  path = pathlib.Path(workdir) / "certify_dssn.tsv"
  with open(path, "ab") as f:
    f.write(b"# a note someone appended\n")
  before = path.read_bytes()
  with pytest.raises(ValueError, match="line 4 is corrupt"):
    certify_workdir.certify_workdir(config, workdir)
  assert path.read_bytes() == before


def test_batching_is_recorded(workdir, fashion_mnist_data_dir):
  config = smoke_config(fashion_mnist_data_dir, max_examples=2)
  certify_workdir.certify_workdir(config, workdir)
  config.certify.chunk_size = 5
  config.certify.batch_size = 2
  certify_workdir.certify_workdir(config, workdir)
  path = pathlib.Path(workdir) / "certify_dssn.tsv"
  history = results_metadata.read_metadata(path)["batching"]
  assert len(history) == 2
  assert history[1]["chunk_size"] == 5 and history[1]["batch_size"] == 2
  assert history[1]["forward_batch"] == 10


# Issue 24: sizes the kernels cannot hold, late checks, tracebacks.


def test_smoothing_sizes_beyond_int32_are_refused_naming_the_field():
  with pytest.raises(ValueError, match=r"^sigma=10000000.0 is too large"):
    smoothing.SmoothingSpec(sigma=1e7)  # L = 8.8e9 levels.
  with pytest.raises(ValueError, match=r"^q=2147483648 is too large"):
    smoothing.SmoothingSpec(sigma=0.5, q=2**31)
  with pytest.raises(ValueError, match=r"^q=536870912 is too large"):
    smoothing.SmoothingSpec(sigma=1.0, q=2**29)  # 4q = 2**31.
  # The largest L the bound 2q + 2L < 2**31 admits at q = 2**28 computes
  # exact noise; one level more is refused (its t2 would wrap around: the
  # noisy value of x = 1 at split index q - 1 came out as -1.5).
  q = 2**28
  top = (2**31 - 1 - 2 * q) // 2
  sigma_of = lambda levels: levels / (2 * math.sqrt(3) * q)
  spec = smoothing.SmoothingSpec(sigma=sigma_of(top), q=q)
  assert spec.levels == top
  noisy = smoothing.dssn_noise(
      jnp.ones((1,)), jnp.full((1,), q - 1, jnp.int32), 0, spec
  )
  assert float(noisy[0]) == 1.0  # t = (2q - 1) / (2q) + L / q > 1: xt = 1.
  with pytest.raises(ValueError, match=r"^sigma=.* is too large for q="):
    smoothing.SmoothingSpec(sigma=sigma_of(top + 1), q=q)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("compute_dtype", "foo", "config.compute_dtype must be one of"),
        ("certify.compute_dtype", "int8", "config.certify.compute_dtype"),
        ("certify.alpha", 0.0, "config.certify.alpha must be in (0, 1)"),
        ("certify.alpha", 1.5, "config.certify.alpha must be in (0, 1)"),
        ("certify.radii", (0.5, -1.0), "config.certify.radii must be"),
        ("certify.radii", (float("nan"),), "config.certify.radii must be"),
    ],
)
def test_value_fields_are_checked(field, value, message):
  config = fashion_mnist_config.get_config("smoke")
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    if field == "compute_dtype":
      config_checks.check_compute_dtype(config)
    else:
      config_checks.check_certify_fields(config)
  fine = fashion_mnist_config.get_config("smoke")
  config_checks.check_compute_dtype(fine)
  config_checks.check_certify_fields(fine)


@pytest.mark.parametrize(
    "field, value", [("alpha", 0.0), ("radii", (1.0, -0.5))]
)
def test_certify_refuses_late_fields_before_any_file(
    workdir, fashion_mnist_data_dir, field, value
):
  """alpha = 0 created an empty results file before failing; negative radii
  failed only in the summary, after every image was certified."""
  config = smoke_config(fashion_mnist_data_dir, max_examples=2)
  config.certify[field] = value
  with pytest.raises(ValueError, match=f"config.certify.{field} must be"):
    certify_workdir.certify_workdir(config, workdir)
  assert not list(pathlib.Path(workdir).glob("certify_*"))


def test_checkpoint_with_edited_num_classes_is_one_error(
    workdir, fashion_mnist_data_dir
):
  """The classifier's parameters no longer fit its metadata: a flax
  ScopeParamShapeError traceback before."""
  (metadata_file,) = pathlib.Path(workdir).glob(
      "checkpoints/*/smoothing/metadata"
  )
  metadata = json.loads(metadata_file.read_text())
  metadata["num_classes"] = 7
  metadata_file.write_text(json.dumps(metadata))
  config = smoke_config(fashion_mnist_data_dir, max_examples=2)
  with pytest.raises(ValueError) as e:
    certify_workdir.certify_workdir(config, workdir)
  message = str(e.value)
  assert "\n" not in message
  assert "does not fit the model its metadata describes" in message
  assert "7 classes" in message and "step 1" in message


def test_user_errors_and_ctrl_c_end_in_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    with experiments.user_errors():
      raise KeyboardInterrupt
  assert e.value.code == 130
  assert capsys.readouterr().err == (
      "interrupted; rerun the same command to resume\n"
  )
  with pytest.raises(SystemExit) as e:
    with experiments.user_errors():
      raise ValueError("a bad value")
  assert e.value.code == 1
  assert capsys.readouterr().err == "error: a bad value\n"
  with pytest.raises(ValueError, match="is a file, not a directory"):
    experiments.check_directory_flag("workdir", __file__)
  experiments.check_directory_flag("workdir", os.path.dirname(__file__))


def test_analyze_over_no_rows_is_an_error(tmp_path):
  """An empty report with exit code 0 before."""
  run = {
      "method": "dssn",
      "dataset": "fashion_mnist",
      "split": "test",
      "start": 0,
      "skip": 1,
      "max_examples": 2,
      "sigma": 0.5,
      "q": 255,
      "levels": 441,
      "offsets_sha256": "0" * 64,
      "model": "small_cnn",
      "training_noise": "dssn",
      "stabilized": False,
      "checkpoint_step": 1,
      "compute_dtype": "float32",
      "process_index": 0,
  }
  path = tmp_path / "results" / "certify_dssn.tsv"
  path.parent.mkdir()
  with results_writer.ResultsWriter(path, "dssn", run).open():
    pass  # A header, no rows.
  with pytest.raises(ValueError, match="No rows in the results files"):
    analyze.analyze(results=[str(path.parent)], outdir=tmp_path / "out")


@pytest.mark.slow
def test_cli_outdir_and_workdir_naming_a_file(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  run = entry_point("analyze", f"--results={tmp_path}", f"--outdir={a_file}")
  assert run.returncode == 1, run.stderr[-2000:]
  assert run.stderr.strip().splitlines()[-1] == (
      f"analyze: error: --outdir={a_file} is a file, not a directory; name "
      "a directory (made if missing)."
  )
  run = entry_point(
      "convert_torch",
      f"--workdir={a_file}",
      f"--checkpoint={tmp_path / 'model.pth'}",
      "--arch=resnet110",
      "--sigma=0.5",
  )
  assert_one_line_error(run, f"--workdir={a_file} is a file")


@pytest.mark.slow
def test_ctrl_c_during_certification_is_one_line_and_resumes(
    workdir, fashion_mnist_data_dir
):
  """A KeyboardInterrupt traceback before; now one line, exit 130, and the
  same command finishes the run."""
  flags = (
      "--config=configs/fashion_mnist.py:smoke",
      f"--workdir={workdir}",
      f"--config.data_dir={fashion_mnist_data_dir}",
      "--config.certify.max_examples=40",
      "--config.certify.batch_size=1",
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.certify", *flags],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      # As in a terminal's foreground job: a test run started in the
      # background (`&`) would hand SIGINT down ignored, and Python then
      # never raises KeyboardInterrupt.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  path = pathlib.Path(workdir) / "certify_dssn.tsv"
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and proc.poll() is None:
    if path.exists() and len(path.read_text().splitlines()) >= 3:
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert err.strip().splitlines()[-1] == (
      "interrupted; rerun the same command to resume"
  )
  run = entry_point("certify", *flags)
  assert run.returncode == 0, run.stderr[-2000:]
  assert len(results_reader.read_results(path)["idx"]) == 40
