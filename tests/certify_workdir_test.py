"""Tests of certification runs (library and the experiments.certify CLI)."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10 as cifar10_config
from configs import fashion_mnist as fashion_mnist_config
from configs import imagenet as imagenet_config
import dssn_jax
from dssn_jax import models
from dssn_jax.core import box
from dssn_jax.core import methods
from dssn_jax.data import datasets
from dssn_jax.data import eval_input
from dssn_jax.reports import analyze
from dssn_jax.runs import certify_batch
from dssn_jax.runs import certify_workdir
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from dssn_jax.runs import run_files
from dssn_jax.training import checkpoints
from tests.conftest import cpu_subprocess_env
from tests.conftest import REPO_ROOT
from tests.conftest import run_python

# Trains models or starts processes: the slow tier (`-m 'not slow'`).
pytestmark = pytest.mark.slow

ROW_COLUMNS = ("idx", "label", "predict", "radius", "correct")


def save_untrained_checkpoint(config, workdir):
  """A freshly initialized classifier saved as a training run would save it."""
  info = datasets.dataset_info(config.dataset)
  model = models.create_model(
      config.model, num_classes=info.num_classes, mean=info.mean, std=info.std
  )
  variables = model.init(
      jax.random.key(0), jnp.zeros((1,) + tuple(info.input_shape)), train=False
  )
  metadata = checkpoints.smoothing_metadata(config)
  checkpointer = checkpoints.Checkpointer(workdir)
  checkpointer.save(
      1,
      {"params": variables["params"], "batch_stats": variables["batch_stats"]},
      metadata,
  )
  checkpointer.close()


def smoke(module, data_dir=None, **certify_overrides):
  config = module.get_config("smoke")
  config.data_dir = data_dir
  config.certify.update(certify_overrides)
  return config


def library_rows(config, workdir):
  """The rows of `certify_batch` called batch by batch outside a run: the
  classifier, spec and offsets straight from the checkpoint, no mesh, no
  results file, no resume."""
  classifier = checkpoints.load_classifier(
      workdir, compute_dtype=config.certify.compute_dtype or None
  )
  cfg = config.certify
  rows = {name: [] for name in ROW_COLUMNS}
  for batch in eval_input.eval_dataset(
      config.dataset,
      split=cfg.split,
      start=cfg.start,
      skip=cfg.skip,
      max_examples=None if cfg.max_examples < 0 else cfg.max_examples,
      batch_size=cfg.batch_size,
      data_dir=config.data_dir,
  ):
    keep = batch["mask"]
    columns = certify_batch.certify_batch(
        cfg,
        classifier,
        classifier.spec,
        classifier.offsets,
        certify_batch.to_inputs(batch["image"][keep]),
        batch["index"][keep],
    )
    pred, radius = columns["predict"], columns["radius"]
    rows["idx"] += list(batch["index"][keep])
    rows["label"] += list(batch["label"][keep])
    rows["predict"] += list(pred)
    rows["radius"] += list(radius)
    rows["correct"] += list(np.asarray(pred) == batch["label"][keep])
  return {k: np.asarray(v) for k, v in rows.items()}


def dataset_inputs(config, idx):
  """The certifier's inputs (B, H, W, C) of the images idx of a config's
  subset, from the dataset itself."""
  cfg = config.certify
  images = {}
  for batch in eval_input.eval_dataset(
      config.dataset,
      split=cfg.split,
      start=cfg.start,
      skip=cfg.skip,
      max_examples=None if cfg.max_examples < 0 else cfg.max_examples,
      batch_size=cfg.batch_size,
      data_dir=config.data_dir,
  ):
    for i in np.flatnonzero(batch["mask"]):
      images[int(batch["index"][i])] = batch["image"][i]
  return certify_batch.to_inputs(np.stack([images[int(i)] for i in idx]))


def assert_top2_columns_from_counts(rows, config, workdir, x):
  """The top-2 and box columns of a randomized run are core/box.py on the
  recorded counts and the images."""
  cfg = config.certify
  lam = checkpoints.load_classifier(workdir).spec.lam
  p_a, p_b = box.joint_bounds(
      rows["count_top"], rows["count_runner_up"], cfg.n, cfg.alpha
  )
  np.testing.assert_array_equal(rows["p_lower"], p_a)
  np.testing.assert_array_equal(rows["p_b_upper"], p_b)
  np.testing.assert_array_equal(
      rows["radius_top2"], box.top2_radius(p_a, p_b, lam)
  )
  np.testing.assert_array_equal(
      rows["radius_box"],
      box.box_radius(np.asarray(x, np.float64), p_a, p_b, lam),
  )
  np.testing.assert_array_equal(rows["predict_top2"] == -1, p_a <= p_b)
  certified = rows["predict"] != -1
  np.testing.assert_array_equal(
      rows["predict_top2"][certified], rows["predict"][certified]
  )
  assert (rows["count_top"] + rows["count_runner_up"] <= cfg.n).all()


def assert_rows_equal(got, expected):
  order = np.argsort(got["idx"])
  for name in ROW_COLUMNS:
    np.testing.assert_array_equal(
        np.asarray(got[name])[order], np.asarray(expected[name]), err_msg=name
    )


@pytest.fixture(scope="module", name="fmnist_workdir")
def fixture_fmnist_workdir(tmp_path_factory, fashion_mnist_data_dir):
  workdir = str(tmp_path_factory.mktemp("fmnist") / "run")
  save_untrained_checkpoint(smoke(fashion_mnist_config), workdir)
  return workdir


def fresh_copy(workdir, tmp_path):
  """A copy of a trained workdir without results (each test its own)."""
  target = str(tmp_path / "run")
  shutil.copytree(workdir, target)
  return target


# ---------------------------------------------------------------------------
# Rows agree with the library, per config.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dssn", "uniform"])
def test_fashion_mnist_rows_match_library(
    fmnist_workdir, tmp_path, fashion_mnist_data_dir, method
):
  workdir = fresh_copy(fmnist_workdir, tmp_path)
  config = smoke(
      fashion_mnist_config,
      fashion_mnist_data_dir,
      method=method,
      max_examples=5,
      skip=3,
  )
  summary = certify_workdir.certify_workdir(config, workdir)
  rows = results_reader.read_results(
      run_files.results_path(workdir, config.certify)
  )
  assert_rows_equal(rows, library_rows(config, workdir))
  np.testing.assert_array_equal(rows["idx"], [0, 3, 6, 9, 12])
  assert summary["images"] == 5
  assert (
      json.load(open(f"{workdir}/certify_{method}.summary.json"))["images"] == 5
  )
  if method == "dssn":
    levels = dssn_jax.SmoothingSpec(config.sigma).levels
    assert (rows["count_top"] + rows["count_runner_up"] <= levels).all()
    np.testing.assert_allclose(rows["radius"], rows["steps"] / 255)
  else:  # The new certificates are recorded, and analyze shows all three.
    assert set(methods.method(method).result_columns) <= set(rows)
    x = dataset_inputs(config, rows["idx"])
    assert_top2_columns_from_counts(rows, config, workdir, x)
    md = analyze.analyze(
        results=[str(run_files.results_path(workdir, config.certify))],
        outdir=tmp_path / "analysis",
        radii=(0.0, 0.1),
    )
    table1 = md.split("### Certified accuracy per run")[0]
    for cert in methods.method(method).certificates:
      assert f"| {cert.label} (σ = " in table1


def test_bfloat16_certification_is_recorded_and_not_mixed(
    fmnist_workdir, tmp_path, fashion_mnist_data_dir
):
  workdir = fresh_copy(fmnist_workdir, tmp_path)
  config = smoke(
      fashion_mnist_config,
      fashion_mnist_data_dir,
      max_examples=3,
      compute_dtype="bfloat16",
  )
  certify_workdir.certify_workdir(config, workdir)
  path = run_files.results_path(workdir, config.certify)
  assert (
      results_metadata.read_metadata(path)["run"]["compute_dtype"] == "bfloat16"
  )
  assert_rows_equal(
      results_reader.read_results(path), library_rows(config, workdir)
  )
  # Rows of a float32 classifier do not go into the bfloat16 file.
  config.certify.compute_dtype = "float32"
  with pytest.raises(ValueError, match="compute_dtype"):
    certify_workdir.certify_workdir(config, workdir)


def test_cifar10_rows_match_library(tmp_path, mock_cifar10):
  del mock_cifar10
  config = smoke(cifar10_config, max_examples=6, start=2)
  workdir = str(tmp_path / "run")
  save_untrained_checkpoint(config, workdir)
  certify_workdir.certify_workdir(config, workdir)
  rows = results_reader.read_results(
      run_files.results_path(workdir, config.certify)
  )
  assert_rows_equal(rows, library_rows(config, workdir))
  np.testing.assert_array_equal(rows["idx"], np.arange(2, 8))


def test_imagenet_rows_match_library(tmp_path):
  config = smoke(imagenet_config)
  workdir = str(tmp_path / "run")
  save_untrained_checkpoint(config, workdir)
  with tfds.testing.mock_data(num_examples=4):
    certify_workdir.certify_workdir(config, workdir)
    expected = library_rows(config, workdir)
  rows = results_reader.read_results(
      run_files.results_path(workdir, config.certify)
  )
  assert_rows_equal(rows, expected)
  assert rows["idx"].size == 2


# ---------------------------------------------------------------------------
# Resume, multi-device and errors through the CLI.
# ---------------------------------------------------------------------------


def cli(workdir, data_dir, *flags, devices=None, wait=True):
  """`python -m experiments.certify` on the smoke config, on `devices` fake
  CPU devices; waited for (its output captured) unless not `wait`."""
  env = cpu_subprocess_env(devices)
  args = [
      "-m",
      "experiments.certify",
      "--config=configs/fashion_mnist.py:smoke",
      f"--workdir={workdir}",
      f"--config.data_dir={data_dir}",
      *flags,
  ]
  if not wait:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
  return run_python(args, env=env)


def rows_of(workdir):
  rows = results_reader.read_results(f"{workdir}/certify_dssn.tsv")
  return {k: v for k, v in rows.items() if k != "time"}


SUBSET = ("--config.certify.max_examples=24", "--config.certify.batch_size=4")


def test_killed_run_resumes_to_the_uninterrupted_rows(
    fmnist_workdir, tmp_path, fashion_mnist_data_dir
):
  # The uninterrupted run in this process (the CLI writes the library's rows:
  # test_fashion_mnist_rows_match_library), the killed one through the CLI.
  straight = fresh_copy(fmnist_workdir, tmp_path / "a")
  config = smoke(fashion_mnist_config, fashion_mnist_data_dir)
  config.certify.max_examples, config.certify.batch_size = 24, 4
  certify_workdir.certify_workdir(config, straight)
  expected = rows_of(straight)
  assert expected["idx"].size == 24

  killed = fresh_copy(fmnist_workdir, tmp_path / "b")
  path = pathlib.Path(killed) / "certify_dssn.tsv"
  process = cli(killed, fashion_mnist_data_dir, *SUBSET, wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if path.exists() and path.read_bytes().count(b"\n") >= 5:  # 4+ rows
      break
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before it could be killed"
  process.send_signal(signal.SIGKILL)
  process.wait()
  partial = results_reader.read_results(str(path))["idx"].size
  assert 4 <= partial < 24
  resumed = cli(killed, fashion_mnist_data_dir, *SUBSET)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  got = rows_of(killed)
  assert sorted(got["idx"]) == list(range(24))  # Each image exactly once.
  for name, column in expected.items():
    np.testing.assert_array_equal(got[name], column, err_msg=name)


def test_cli_on_4_devices_writes_the_rows_of_1(
    fmnist_workdir, tmp_path, fashion_mnist_data_dir
):
  one = fresh_copy(fmnist_workdir, tmp_path / "one")
  four = fresh_copy(fmnist_workdir, tmp_path / "four")
  flags = ("--config.certify.max_examples=10", "--config.certify.batch_size=5")
  for workdir, devices in ((one, None), (four, 4)):
    run = cli(workdir, fashion_mnist_data_dir, *flags, devices=devices)
    assert run.returncode == 0, run.stderr[-2000:]
  expected, got = rows_of(one), rows_of(four)
  for name, column in expected.items():
    np.testing.assert_array_equal(got[name], column, err_msg=name)
  # -1: one image per local device, 4 per call here; the same rows.
  auto = fresh_copy(fmnist_workdir, tmp_path / "auto")
  run = cli(
      auto,
      fashion_mnist_data_dir,
      "--config.certify.max_examples=10",
      "--config.certify.batch_size=-1",
      devices=4,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  for name, column in expected.items():
    np.testing.assert_array_equal(rows_of(auto)[name], column, err_msg=name)
  path = f"{auto}/certify_dssn.tsv"
  batching = results_metadata.read_metadata(path)["batching"]
  assert [b["batch_size"] for b in batching] == [4], batching


def test_cli_errors_exit_nonzero_with_message(tmp_path, fashion_mnist_data_dir):
  run = cli(str(tmp_path / "missing"), fashion_mnist_data_dir)
  assert run.returncode != 0
  assert "No checkpoint" in run.stderr and "Traceback" not in run.stderr


def test_config_sigma_disagreeing_with_checkpoint(
    fmnist_workdir, tmp_path, fashion_mnist_data_dir
):
  workdir = fresh_copy(fmnist_workdir, tmp_path)
  config = smoke(fashion_mnist_config, fashion_mnist_data_dir)
  config.sigma = 0.25
  with pytest.raises(ValueError, match="sigma.*override_smoothing"):
    certify_workdir.certify_workdir(config, workdir)
  assert not os.path.exists(f"{workdir}/certify_dssn.tsv")
  config.certify.override_smoothing = True
  config.certify.max_examples = 2
  summary = certify_workdir.certify_workdir(config, workdir)
  assert summary["sigma"] == 0.25


def test_results_file_of_another_run_is_refused(
    fmnist_workdir, tmp_path, fashion_mnist_data_dir
):
  workdir = fresh_copy(fmnist_workdir, tmp_path)
  config = smoke(fashion_mnist_config, fashion_mnist_data_dir, max_examples=2)
  certify_workdir.certify_workdir(config, workdir)
  before = pathlib.Path(f"{workdir}/certify_dssn.tsv").read_bytes()
  config.certify.skip = 2  # Another subset: another run.
  with pytest.raises(ValueError, match="skip"):
    certify_workdir.certify_workdir(config, workdir)
  assert pathlib.Path(f"{workdir}/certify_dssn.tsv").read_bytes() == before


def test_empty_subset(fmnist_workdir, tmp_path, fashion_mnist_data_dir):
  workdir = fresh_copy(fmnist_workdir, tmp_path)
  config = smoke(fashion_mnist_config, fashion_mnist_data_dir, start=10_000)
  with pytest.raises(ValueError, match="(?i)empty"):
    certify_workdir.certify_workdir(config, workdir)


def test_corrupt_checkpoint(fmnist_workdir, tmp_path, fashion_mnist_data_dir):
  workdir = fresh_copy(fmnist_workdir, tmp_path)
  for path in pathlib.Path(workdir, "checkpoints").rglob("*"):
    if path.is_file() and "state" in path.parts:
      path.write_bytes(b"garbage")
  config = smoke(fashion_mnist_config, fashion_mnist_data_dir)
  with pytest.raises(ValueError, match="corrupt|could not be restored"):
    certify_workdir.certify_workdir(config, workdir)


def test_off_grid_pixels_in_data(
    fmnist_workdir, tmp_path, fashion_mnist_data_dir, monkeypatch
):
  workdir = fresh_copy(fmnist_workdir, tmp_path)
  original = eval_input.eval_dataset

  def off_grid(*args, **kwargs):
    for batch in original(*args, **kwargs):
      x = batch["image"].astype(np.float32) / 255
      yield {**batch, "image": np.where(x < 1, x + 0.3 / 255, x)}

  class Batches:  # Keeps the EvalBatches attributes the run reads.

    def __init__(self, *args, **kwargs):
      self._inner = original(*args, **kwargs)
      self.num_local_examples = self._inner.num_local_examples
      self.indices = self._inner.indices
      self.num_examples = self._inner.num_examples
      self._args = (args, kwargs)

    def __iter__(self):
      return off_grid(*self._args[0], **self._args[1])

  monkeypatch.setattr(eval_input, "eval_dataset", Batches)
  config = smoke(fashion_mnist_config, fashion_mnist_data_dir)
  with pytest.raises(ValueError, match="quantized"):
    certify_workdir.certify_workdir(config, workdir)
  rows = results_reader.read_results(f"{workdir}/certify_dssn.tsv")
  assert rows["idx"].size == 0
