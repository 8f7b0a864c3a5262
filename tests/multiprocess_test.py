"""Multi-host training and certification, with real processes.

Every test starts the entry points of experiments/ as separate Python
processes joined by `jax.distributed` on a free local port (gloo collectives,
2 fake CPU devices per process), exactly as README "Multi-host" tells users
to, and compares with one process on the same global devices and batches.
Each process has a timeout, so a hang fails the test instead of CI.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dssn_jax.runs import results_reader
from dssn_jax.training import checkpoints
from tests.conftest import cpu_subprocess_env
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TIMEOUT_S = 420
CONFIG = "configs/fashion_mnist.py:smoke"
# Small training run: 2 epochs of 2 steps, a learning rate at which SGD does
# not amplify rounding differences (see test_training_...), a checkpoint
# after every step (mid-epoch ones too: steps 1 and 3), of which the last 3
# are kept (steps 2, 3 and 4).
TRAIN_FLAGS = (
    "--config.steps_per_epoch=2",
    "--config.learning_rate=0.01",
    "--config.checkpoint_every_steps=1",
)
# 24 test images, 2 per process per batch: many batches to kill a run in.
CERTIFY_FLAGS = (
    "--config.certify.max_examples=24",
    "--config.certify.batch_size=2",
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(module, workdir, data_dir, *flags, processes=1, devices=2):
  """Starts `python -m experiments.<module>` on `processes` processes."""
  env = cpu_subprocess_env(devices)
  command = [
      sys.executable,
      "-m",
      f"experiments.{module}",
      f"--config={CONFIG}",
      f"--config.data_dir={data_dir}",
      f"--workdir={workdir}",
      *flags,
  ]
  if processes > 1:
    port = _free_port()
    command += [
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={processes}",
        "--distributed_timeout=120",
    ]
  return [
      subprocess.Popen(
          command + ([f"--process_id={i}"] if processes > 1 else []),
          cwd=REPO_ROOT,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i in range(processes)
  ]


def _wait(procs) -> float:
  """Waits for all processes (killing all after TIMEOUT_S); their seconds."""
  start = time.perf_counter()
  outputs = []
  try:
    for p in procs:
      remaining = max(1.0, TIMEOUT_S - (time.perf_counter() - start))
      outputs.append(p.communicate(timeout=remaining)[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"processes still running after {TIMEOUT_S} s (a hang?)")
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return time.perf_counter() - start


def _run(module, workdir, data_dir, *flags, processes=1, devices=2) -> float:
  return _wait(
      _start(
          module,
          workdir,
          data_dir,
          *flags,
          processes=processes,
          devices=devices,
      )
  )


def _state(workdir, step=None):
  checkpointer = checkpoints.Checkpointer(workdir, create=False)
  state = checkpointer.restore(step=step)
  checkpointer.close()
  return jax.tree.map(np.asarray, state)


def _rows(workdir, method):
  """The merged rows of every process's file, without the time column."""
  paths = [
      os.path.join(workdir, f)
      for f in sorted(os.listdir(workdir))
      if f.startswith(f"certify_{method}") and f.endswith(".tsv")
  ]
  rows = results_reader.read_results(paths)
  del rows["time"]
  return rows, paths


def _copy_checkpoints(source, destination):
  shutil.copytree(
      os.path.join(source, checkpoints.CHECKPOINT_DIR),
      os.path.join(destination, checkpoints.CHECKPOINT_DIR),
  )


@pytest.fixture(scope="module")
def trained(fashion_mnist_data_dir, tmp_path_factory):
  """A smoke classifier trained on 2 processes x 2 devices, and the same
  training on 1 process x 4 devices; wall seconds of each."""
  root = tmp_path_factory.mktemp("multiprocess")
  two, one = str(root / "two"), str(root / "one")
  seconds_two = _run(
      "train", two, fashion_mnist_data_dir, *TRAIN_FLAGS, processes=2, devices=2
  )
  seconds_one = _run(
      "train",
      one,
      fashion_mnist_data_dir,
      *TRAIN_FLAGS,
      "--config.data_shards=2",
      devices=4,
  )
  print(
      f"training wall time: 2 processes {seconds_two:.1f} s, "
      f"1 process {seconds_one:.1f} s"
  )
  return {
      "two": two,
      "one": one,
      "root": root,
      "data_dir": fashion_mnist_data_dir,
  }


def test_training_on_2_processes_matches_1_process(trained):
  two, one = _state(trained["two"]), _state(trained["one"])
  assert int(two["step"]) == int(one["step"]) == 4
  # Same global batches (2 data shards either way) and the same 4-device
  # mesh; only the order in which the 4 devices' partial sums (loss,
  # gradients, BatchNorm statistics) are reduced differs: gloo across
  # processes vs XLA's in-process all-reduce. Reordering float32 additions
  # moves results by a few ulps (1.2e-7 relative each); 4 small SGD steps
  # barely amplify it (measured: at most 1.4e-7, one ulp at 1.0). 1e-5 is
  # ~100 ulps; any different batch row moves parameters by ~1e-3.
  for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(two), jax.tree.leaves(one)
  ):
    np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path)
    )
  # Process 0 alone wrote the metrics, one line per step.
  assert _metric_steps(trained["two"]) == [1, 2, 3, 4]


def _metric_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


def test_training_killed_on_all_processes_resumes_to_the_same_parameters(
    trained,
):
  """Losing the last epoch (all processes killed before its checkpoint)
  and restarting both processes ends with bitwise the same parameters."""
  resumed = str(trained["root"] / "resumed")
  shutil.copytree(trained["two"], resumed)
  for step in ("3", "4"):
    shutil.rmtree(os.path.join(resumed, checkpoints.CHECKPOINT_DIR, step))
  _run(
      "train",
      resumed,
      trained["data_dir"],
      *TRAIN_FLAGS,
      processes=2,
      devices=2,
  )
  for a, b in zip(
      jax.tree.leaves(_state(trained["two"])), jax.tree.leaves(_state(resumed))
  ):
    np.testing.assert_array_equal(a, b)
  assert _metric_steps(resumed) == [1, 2, 3, 4]


def test_training_killed_mid_epoch_on_2_processes_resumes_on_1(trained):
  """A 2-process run killed after its mid-epoch checkpoint (step 3 of 4)
  resumes on 1 process (4 devices, the same mesh), reading both data
  shards from their saved iterator states, and ends where the
  uninterrupted 2-process run ends."""
  resumed = str(trained["root"] / "resumed_on_1")
  shutil.copytree(trained["two"], resumed)
  shutil.rmtree(os.path.join(resumed, checkpoints.CHECKPOINT_DIR, "4"))
  _run("train", resumed, trained["data_dir"], *TRAIN_FLAGS, devices=4)
  # The iterators went on from the saved states: at step 4 they stand where
  # the 2-process run's did (JSON files, compared exactly).
  for shard in (0, 1):
    assert _shard_state(resumed, 4, shard) == _shard_state(
        trained["two"], 4, shard
    )
  # Not bitwise: step 4 sums the 4 devices' partial gradients and BatchNorm
  # statistics in XLA's in-process all-reduce instead of gloo across the
  # processes, another order of float32 additions (see
  # test_training_on_2_processes_matches_1_process). Measured after that one
  # step: at most 1.7e-6 in the momentum traces (values up to 3, ~7 ulps),
  # 1.5e-8 in the parameters. A replayed batch (the iterators restarted at
  # the epoch's start) moves the traces by up to 1.6, so the tolerance below
  # (3x the rounding) tells a wrong batch from rounding by 5 orders.
  for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(_state(trained["two"])),
      jax.tree.leaves(_state(resumed)),
  ):
    np.testing.assert_allclose(
        b, a, rtol=1e-6, atol=5e-6, err_msg=jax.tree_util.keystr(path)
    )
  assert _metric_steps(resumed) == [1, 2, 3, 4]


def _shard_state(workdir, step, shard):
  path = os.path.join(
      workdir,
      checkpoints.CHECKPOINT_DIR,
      str(step),
      checkpoints.DATA_ITEM,
      f"shard_{shard}.json",
  )
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def reference(trained):
  """Certification of the 2-process classifier by 1 process x 2 devices."""
  out = {}
  for method in ("dssn", "uniform"):
    workdir = str(trained["root"] / f"certify_one_{method}")
    _copy_checkpoints(trained["two"], workdir)
    seconds = _run(
        "certify",
        workdir,
        trained["data_dir"],
        *CERTIFY_FLAGS,
        f"--config.certify.method={method}",
    )
    out[method] = (_rows(workdir, method)[0], seconds)
  return out


@pytest.mark.parametrize("method", ["dssn", "uniform"])
def test_certification_on_2_processes_matches_1_process(
    trained, reference, method
):
  workdir = str(trained["root"] / f"certify_two_{method}")
  _copy_checkpoints(trained["two"], workdir)
  seconds = _run(
      "certify",
      workdir,
      trained["data_dir"],
      *CERTIFY_FLAGS,
      f"--config.certify.method={method}",
      processes=2,
  )
  rows, paths = _rows(workdir, method)
  print(
      f"{method} certification wall time: 2 processes {seconds:.1f} s, "
      f"1 process {reference[method][1]:.1f} s"
  )
  assert [os.path.basename(p) for p in paths] == [
      f"certify_{method}.process1.tsv",
      f"certify_{method}.tsv",
  ]
  expected = reference[method][0]
  assert rows["idx"].tolist() == list(range(24))
  for column in expected:
    np.testing.assert_array_equal(rows[column], expected[column], column)
  # Process 0 wrote the summary of the merged files.
  with open(os.path.join(workdir, f"certify_{method}.summary.json")) as f:
    assert '"images": 24' in f.read()


def _kill_mid_certification(workdir, data_dir):
  """Starts a 2-process DSSN certification and SIGKILLs process 1 once it
  has written a row (then process 0, which would otherwise wait for it
  until the heartbeat timeout, as a cluster scheduler tears the job down)."""
  procs = _start("certify", workdir, data_dir, *CERTIFY_FLAGS, processes=2)
  path = os.path.join(workdir, "certify_dssn.process1.tsv")
  deadline = time.perf_counter() + TIMEOUT_S
  try:
    while time.perf_counter() < deadline:
      if os.path.exists(path):
        with open(path) as f:
          if len(f.readlines()) >= 2:  # The header and a row.
            break
      if any(p.poll() is not None for p in procs):
        pytest.fail(
            "a process ended before it could be killed: "
            + procs[0].communicate()[0][-2000:]
        )
      time.sleep(0.02)
    else:
      pytest.fail("process 1 wrote no row in time")
  finally:
    procs[1].send_signal(signal.SIGKILL)
    procs[0].send_signal(signal.SIGKILL)
    for p in procs:
      p.communicate(timeout=60)
  return _rows(workdir, "dssn")[0]["idx"].size


@pytest.mark.parametrize("restart_processes", [2, 1])
def test_certification_killed_mid_run_resumes_exactly(
    trained, reference, restart_processes
):
  """A 2-process run killed mid-run, restarted on 2 processes (or on 1: the
  subset is re-sliced, images done in any file are skipped), has every
  image exactly once, with the rows of an uninterrupted run."""
  workdir = str(trained["root"] / f"killed_{restart_processes}")
  _copy_checkpoints(trained["two"], workdir)
  before = _kill_mid_certification(workdir, trained["data_dir"])
  assert 0 < before < 24
  _run(
      "certify",
      workdir,
      trained["data_dir"],
      *CERTIFY_FLAGS,
      processes=restart_processes,
  )
  rows, _ = _rows(workdir, "dssn")  # Raises on an image in two files.
  expected = reference["dssn"][0]
  assert rows["idx"].tolist() == list(range(24))
  for column in expected:
    np.testing.assert_array_equal(rows[column], expected[column], column)


def test_unreachable_coordinator_ends_with_one_line_not_a_hang(tmp_path):
  """Process 1 alone: nobody hosts the coordinator. It ends after
  --distributed_timeout with the fix, never a hang or a C++ stack trace
  (settings refused before joining: distributed_test.py)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  command = [
      sys.executable,
      "-m",
      "experiments.certify",
      f"--config={CONFIG}",
      f"--workdir={tmp_path}",
      "--num_processes=2",
      "--process_id=1",
      f"--coordinator_address=127.0.0.1:{_free_port()}",
      "--distributed_timeout=2",
  ]
  result = subprocess.run(
      command,
      cwd=REPO_ROOT,
      env=env,
      text=True,
      capture_output=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(
      "error: Not all processes joined the distributed runtime via the "
      "coordinator at 127.0.0.1:"
  ), result.stderr[-2000:]
  assert "within 2 s" in last and "--distributed_timeout" in last
