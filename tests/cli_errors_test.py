"""Every bad input to the command line ends in one line naming the fix.

The cases of issue 13's table: integer sentinels, a missing data_dir, a
read-only or file workdir, rows outside the requested subset, a complete
non-row line, imagenet2012 without its tars, TensorFlow's start-up lines.
"""

import errno
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from configs import fashion_mnist as fashion_mnist_config
from dssn_jax.runs import certify_workdir
from dssn_jax.runtime import config_checks
from dssn_jax.data import input_pipeline
from dssn_jax.runs import results
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
        ("shuffle_buffer", -7),
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
    input_pipeline.num_examples_in_subset("imagenet2012", data_dir=tmp_path)


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
  monkeypatch.setattr(results.os, "open", read_only_os_open(os.open))
  # Every row done: summarized although nothing can be written.
  summary = certify_workdir.certify_workdir(config, workdir)
  assert summary["images"] == 3
  assert summary["clean_accuracy"] == done["clean_accuracy"]
  # Rows missing: an error that says what to do, nothing written.
  path = pathlib.Path(workdir) / "certify_dssn.tsv"
  path.write_bytes(b"".join(path.read_bytes().splitlines(True)[:-1]))
  with pytest.raises(ValueError, match="1 of the requested images.*writable"):
    certify_workdir.certify_workdir(config, workdir)
  monkeypatch.undo()
  fresh = str(pathlib.Path(workdir).parent / "fresh")
  shutil.copytree(
      pathlib.Path(workdir) / "checkpoints", pathlib.Path(fresh) / "checkpoints"
  )
  monkeypatch.setattr(results.os, "open", read_only_os_open(os.open))
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
    results.read_results(path)  # What analyze reads.


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
  history = results.read_metadata(path)["batching"]
  assert len(history) == 2
  assert history[1]["chunk_size"] == 5 and history[1]["batch_size"] == 2
  assert history[1]["forward_batch"] == 10
