"""Processes that disagree or fail end together, with one line each.

Real processes (`jax.distributed` on 127.0.0.1, gloo) run
tests/programs/process_agreement.py, which starts as every entry point does
and then compares a value and its computation record across processes; the
entry points' own runs (training, certification) are at the end, marked
slow. Every process has a timeout, so a hang fails the test instead of CI.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from configs import fashion_mnist as fashion_mnist_config
from dssn_jax.runtime import process_ids
from tests import certify_workdir_test
from tests.conftest import cpu_subprocess_env
from tests.conftest import REPO_ROOT

# A wrong or failed process must end every process within this many seconds
# (of the first one's end; start-up is not counted: TensorFlow's import alone
# takes seconds on a loaded machine).
STOP_WITHIN_S = 30
TIMEOUT_S = 240


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(module, flags_of, *, port=None, num_processes=2, env_of=None):
  """Starts `python -m module` once per entry of flags_of (process ids
  0, 1, ... unless the flags say otherwise)."""
  port = port or free_port()
  procs = []
  for i, flags in enumerate(flags_of):
    command = [
        sys.executable,
        "-m",
        module,
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={num_processes}",
        f"--process_id={i}",
        "--distributed_timeout=60",
        *flags,
    ]
    procs.append(
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=cpu_subprocess_env(**((env_of or {}).get(i, {}))),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
  return procs


def finish(procs):
  """(returncode, stdout, stderr) of every process, and the seconds between
  the first and the last process's end; kills all after TIMEOUT_S."""
  deadline = time.monotonic() + TIMEOUT_S
  ended = {}
  while len(ended) < len(procs) and time.monotonic() < deadline:
    for i, p in enumerate(procs):
      if i not in ended and p.poll() is not None:
        ended[i] = time.monotonic()
    time.sleep(0.05)
  if len(ended) < len(procs):
    for p in procs:
      p.kill()
    outs = [p.communicate()[1][-1500:] for p in procs]
    pytest.fail(f"processes still running after {TIMEOUT_S} s: {outs}")
  results = [(p.returncode, *p.communicate()) for p in procs]
  return results, max(ended.values()) - min(ended.values())


def last_line(stderr: str) -> str:
  lines = stderr.strip().splitlines()
  assert lines, "no error line"
  assert "Traceback" not in stderr, stderr[-3000:]
  assert "Check failed" not in stderr and "F0000" not in stderr, stderr
  return lines[-1]


def agreement(flags_of, **kwargs):
  return finish(start("tests.programs.process_agreement", flags_of, **kwargs))


@pytest.mark.slow  # As every multi-process run of multiprocess_test.py.
def test_processes_that_agree_go_on():
  results, _ = agreement([[], []])
  for rc, out, err in results:
    assert rc == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "agreed"


def test_a_different_setting_stops_every_process_naming_it():
  results, spread = agreement([["--value=0.5"], ["--value=0.25"]])
  assert spread < STOP_WITHIN_S
  for rc, _, err in results:
    assert rc == 1, err[-2000:]
    line = last_line(err)
    assert line.startswith("error: The processes disagree on config.value")
    assert 'process 0 has "0.5", process 1 has "0.25"' in line


@pytest.mark.slow
def test_different_xla_options_are_not_merged():
  """Issue 24, case 3: DSSN_JAX_XLA_DEFAULTS=0 on process 1 only."""
  # The tests' environment carries the default options in XLA_FLAGS.
  results, spread = agreement(
      [[], []], env_of={1: {"DSSN_JAX_XLA_DEFAULTS": "0", "XLA_FLAGS": ""}}
  )
  assert spread < STOP_WITHIN_S
  for rc, _, err in results:
    assert rc == 1, err[-2000:]
    assert "disagree on computation.xla_flags" in last_line(err)


@pytest.mark.parametrize(
    "failing", [pytest.param(0, marks=pytest.mark.slow), 1]
)
def test_an_error_on_one_process_ends_the_others_at_once(failing):
  """Issue 24, case 2: the others wait in a barrier (a collective that the
  failed process never joins); the failure must end them, not a timeout."""
  flags = [f"--fail_on={failing}", "--hang"]
  results, spread = agreement([flags, flags])
  assert spread < 10  # Not the 60 s start-up timeout, nor JAX's 300 s.
  for i, (rc, _, err) in enumerate(results):
    assert rc == 1, err[-2000:]
    line = last_line(err)
    if i == failing:
      assert line == f"error: a bad setting on process {failing}"
    else:
      assert line == (
          f"error: process {failing} failed: a bad setting on process "
          f"{failing}; stopping"
      )


@pytest.mark.slow
def test_ctrl_c_on_one_process_ends_all_with_the_resume_line():
  flags = ["--interrupt_on=1", "--hang"]
  results, spread = agreement([flags, flags])
  assert spread < 10
  (rc0, _, err0), (rc1, _, err1) = results
  assert rc1 == 130, err1[-2000:]
  assert last_line(err1) == "interrupted; rerun the same command to resume"
  assert rc0 == 1
  assert last_line(err0).startswith("error: process 1 failed: interrupted")


def test_coordinator_port_in_use_is_one_line():
  """Issue 24, case 7: JAX's service segfaulted (rc 139) on a used port."""
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    (result,), _ = agreement([[]], port=port)
  rc, _, err = result
  assert rc == 1, err[-2000:]
  line = last_line(err)
  assert line.startswith(f"error: Port {port} of --coordinator_address=")
  assert "already in use" in line


@pytest.mark.slow  # Three processes.
def test_a_duplicate_process_id_is_one_line_and_the_job_goes_on():
  """Issue 24, case 7: a second process 1 made JAX's coordination service
  abort every process of the job (C++ fatal error, rc 134)."""
  port = free_port()
  procs = start("tests.programs.process_agreement", [[], []], port=port)
  procs += start(
      "tests.programs.process_agreement", [["--process_id=1"]], port=port
  )
  results, _ = finish(procs)
  (rc0, out0, err0), *ones = results
  assert rc0 == 0, err0[-2000:]
  assert out0.strip().splitlines()[-1] == "agreed"
  # Whichever of the two processes 1 claimed the id first joins the job.
  assert sorted(rc for rc, _, _ in ones) == [0, 1], [
      e[-2000:] for *_, e in ones
  ]
  for rc, out, err in ones:
    if rc == 0:
      assert out.strip().splitlines()[-1] == "agreed"
    else:
      line = last_line(err)
      assert line.startswith("error: --process_id=1 is already taken by ")
      assert "give every process its own id 0 .. N-1" in line


def test_a_process_id_is_claimed_once_per_lock_directory(tmp_path):
  directory = process_ids.lock_directory(str(tmp_path / "workdir"))
  assert directory == str(tmp_path / "workdir" / ".process_ids")
  holder = subprocess.Popen(
      [
          sys.executable,
          "-c",
          "import sys, time; from dssn_jax.runtime import process_ids; "
          f"process_ids.claim({directory!r}, '127.0.0.1:1', 3); "
          "print('held', flush=True); time.sleep(60)",
      ],
      cwd=REPO_ROOT,
      env=cpu_subprocess_env(),
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=r"--process_id=3 is already taken"):
      process_ids.claim(directory, "127.0.0.1:1", 3)
    process_ids.claim(directory, "127.0.0.1:2", 3)  # Another job's id 3.
  finally:
    holder.kill()
    holder.wait()
  process_ids.claim(directory, "127.0.0.1:1", 3)  # Released by the kill.
  # A remote workdir cannot hold locks: this machine's temporary directory.
  assert "://" not in process_ids.lock_directory("gs://bucket/run")


@pytest.mark.slow
def test_mismatched_process_counts_are_one_line_on_every_process():
  procs = start("tests.programs.process_agreement", [[], []])
  results, spread = finish(procs)
  assert all(rc == 0 for rc, _, _ in results)
  # Process 1 believes in 3 processes, process 0 (the coordinator) in 2.
  port = free_port()
  procs = start("tests.programs.process_agreement", [[]], port=port)
  procs += start(
      "tests.programs.process_agreement",
      [["--process_id=1", "--num_processes=3"]],
      port=port,
  )
  results, spread = finish(procs)
  assert spread < 10
  for rc, _, err in results:
    assert rc == 1, err[-2000:]
    assert (
        "--num_processes=3 on process 1, but the coordinator started a "
        "job of 2 processes" in last_line(err)
    )


# The entry points themselves: training and certification (slow: each
# process imports TensorFlow and builds its input pipeline).

ENTRY_FLAGS = (
    "--config=configs/fashion_mnist.py:smoke",
    "--config.steps_per_epoch=2",
    "--config.certify.max_examples=4",
)


@pytest.fixture(scope="session", name="untrained_workdir")
def fixture_untrained_workdir(tmp_path_factory):
  """A smoke classifier's checkpoint (untrained: certification only needs
  one to start), shared by the tests of this session."""
  workdir = str(tmp_path_factory.mktemp("agreement") / "run")
  certify_workdir_test.save_untrained_checkpoint(
      fashion_mnist_config.get_config("smoke"), workdir
  )
  return workdir


@pytest.mark.slow
def test_training_with_another_sigma_on_one_process_stops_both(
    tmp_path, fashion_mnist_data_dir
):
  """Issue 24, case 1: process 1 trained at sigma 0.25 under a checkpoint
  that says 0.5, and both exited 0."""
  common = [
      *ENTRY_FLAGS,
      f"--config.data_dir={fashion_mnist_data_dir}",
      f"--workdir={tmp_path / 'run'}",
  ]
  results, spread = finish(
      start("experiments.train", [common, common + ["--config.sigma=0.25"]])
  )
  assert spread < STOP_WITHIN_S, [err[-1500:] for _, _, err in results]
  for rc, _, err in results:
    assert rc == 1, err[-2000:]
    line = last_line(err)
    assert line.startswith("error: The processes disagree on config.sigma")
    assert "process 0 has 0.5, process 1 has 0.25" in line
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "2")


@pytest.mark.slow
def test_certification_config_error_on_one_process_stops_both(
    untrained_workdir, fashion_mnist_data_dir
):
  """Issue 24, case 2: the failing process waited in JAX's shutdown barrier,
  the other at "files read"; ~300 s later both aborted (rc 134)."""
  common = [
      *ENTRY_FLAGS,
      f"--config.data_dir={fashion_mnist_data_dir}",
      f"--workdir={untrained_workdir}",
  ]
  results, spread = finish(
      start(
          "experiments.certify",
          [common, common + ["--config.certify.max_examples=-5"]],
      )
  )
  assert spread < STOP_WITHIN_S
  (rc0, _, err0), (rc1, _, err1) = results
  assert rc1 == 1 and rc0 == 1, (err0[-2000:], err1[-2000:])
  assert last_line(err1).startswith(
      "error: config.certify.max_examples must be -1"
  )
  assert last_line(err0).startswith(
      "error: process 1 failed: config.certify.max_examples must be -1"
  )
  assert last_line(err0).endswith("; stopping")


@pytest.mark.slow
def test_survivor_of_a_killed_peer_ends_with_one_line(
    tmp_path, fashion_mnist_data_dir
):
  """Issue 24, case 8: process 1 of a 2-process training is killed; process
  0 ended with a gloo traceback."""
  common = [
      *ENTRY_FLAGS,
      "--config.num_epochs=50",
      f"--config.data_dir={fashion_mnist_data_dir}",
      f"--workdir={tmp_path / 'run'}",
  ]
  procs = start("experiments.train", [common, common])
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.monotonic() + TIMEOUT_S
  while not metrics.exists() and time.monotonic() < deadline:
    assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  results, _ = finish(procs)
  rc, _, err = results[0]
  assert rc == 1, err[-3000:]
  line = last_line(err)
  assert line.startswith("error: "), err[-3000:]
  assert "rerun the same command" in line.lower(), line
