"""Start-up settings and the process-count rules of resumed runs, in-process.

The runs with real processes are in multiprocess_test.py; these check the
decisions made before any process joins, in milliseconds.
"""

import socket

import jax
import pytest

from configs import fashion_mnist
from dssn_jax.runtime import distributed
from dssn_jax.training import batches


def test_single_process_is_the_default_and_needs_nothing():
  assert distributed.initialize() is False
  assert distributed.is_primary()
  distributed.barrier("alone")  # A no-op with one process.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(coordinator_address="127.0.0.1:1", num_processes=2),
            "needs --coordinator_address, --num_processes and --process_id",
        ),
        (
            dict(
                coordinator_address="127.0.0.1:1", num_processes=2, process_id=2
            ),
            "--process_id=2 is out of range for --num_processes=2",
        ),
        (
            dict(
                coordinator_address="127.0.0.1:1",
                num_processes=2,
                process_id=-1,
            ),
            "out of range",
        ),
        (
            dict(
                coordinator_address="127.0.0.1:1", num_processes=0, process_id=0
            ),
            "--num_processes=0 must be at least 1",
        ),
        (
            dict(
                coordinator_address="127.0.0.1:1",
                num_processes=2,
                process_id=0,
                timeout_s=0,
            ),
            "--distributed_timeout=0",
        ),
    ],
)
def test_bad_settings_are_refused_before_joining(kwargs, message):
  with pytest.raises(ValueError, match=message.replace("-", r"\-")):
    distributed.initialize(**kwargs)
  assert not jax.distributed.is_initialized()


def _config(**fields):
  config = fashion_mnist.get_config("smoke")
  config.update(fields)
  return config


def test_data_shards_default_to_one_per_process_and_stick_to_the_run():
  assert batches.data_shards(_config(), None, "w") == 1
  assert batches.data_shards(_config(data_shards=2), None, "w") == 2
  # A resumed run keeps its checkpoint's shard count (the data order).
  assert batches.data_shards(_config(), {"data_shards": 4}, "w") == 4
  assert batches.data_shards(_config(), {}, "w") == 1  # Older checkpoints.


def test_data_shards_mismatches_are_refused_with_the_fix(monkeypatch):
  with pytest.raises(ValueError, match="Resume with --config.data_shards=2"):
    batches.data_shards(_config(data_shards=4), {"data_shards": 2}, "w")
  with pytest.raises(ValueError, match="multiple of the 3 training-data"):
    batches.data_shards(_config(data_shards=3), None, "w")
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  with pytest.raises(
      ValueError,
      match="4 processes cannot split evenly. "
      "Run it with a number of processes that divides 2",
  ):
    batches.data_shards(_config(), {"data_shards": 2}, "w")


def test_disagreement_names_the_field_the_processes_and_values():
  records = {
      0: distributed._flatten({"config": {"sigma": 0.5, "q": 255}}),
      1: distributed._flatten({"config": {"sigma": 0.25, "q": 255}}),
      2: distributed._flatten({"config": {"sigma": 0.5}}),
  }
  with pytest.raises(ValueError) as e:
    distributed._compare("training start", records)
  message = str(e.value)
  assert "\n" not in message
  # Sorted fields: config.q (missing on process 2) comes first.
  assert message.startswith(
      "The processes disagree on config.q at the training start: process 0 "
      "has 255, process 1 has 255, process 2 has no such field."
  )
  del records[2]
  with pytest.raises(
      ValueError, match="sigma.*process 0 has 0.5, process 1 " "has 0.25"
  ):
    distributed._compare("training start", records)
  records[1] = records[0]
  distributed._compare("training start", records)  # Agreement: no error.


def test_agreement_is_a_no_op_alone():
  distributed.agree("start", {"anything": object()})  # Not even serialized.
  distributed.agree_on_run("start", _config(), {"backend": "cpu"}, step=3)


def test_a_coordinator_port_in_use_is_refused_before_joining():
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(ValueError, match=f"Port {port} .* already in use"):
      distributed.initialize(
          coordinator_address=f"127.0.0.1:{port}",
          num_processes=2,
          process_id=0,
      )
  assert not jax.distributed.is_initialized()
  # A closed port is free again (TIME_WAIT does not count).
  distributed._check_port_free(f"127.0.0.1:{port}")
  with pytest.raises(ValueError, match="must be host:port"):
    distributed._check_port_free("localhost")
