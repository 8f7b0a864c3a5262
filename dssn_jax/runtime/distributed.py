"""Start-up of the JAX distributed runtime for multi-host runs.

One Python process per host; every process runs the same command with its own
process id. `initialize` must run before any JAX computation (it is the first
thing every entry point of experiments/ does) and chooses one of three modes:

- single process (the default): nothing to do;
- explicit: `coordinator_address="10.0.0.1:1234", num_processes=N,
  process_id=i` on every process (any cluster, or several processes on one
  machine with `127.0.0.1:PORT`);
- automatic: `auto=True` calls a plain `jax.distributed.initialize()`, which
  detects Cloud TPU pods, SLURM and Open MPI jobs by itself.

CPU processes exchange collectives through gloo. A coordinator that cannot be
reached, or processes that disagree on the process count, end with a
ValueError naming the fix after `timeout_s` instead of hanging.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from absl import logging
import jax
from jax.experimental import multihost_utils

# Seconds a process waits for all processes to join; then a clear error.
DEFAULT_TIMEOUT_S = 120
# A process that sends no heartbeat for this long is dead: the others stop
# rather than wait forever in a collective.
HEARTBEAT_TIMEOUT_S = 60
# JAX's own start-up deadline is later than ours: when it passes, the XLA
# runtime aborts the process with a C++ stack trace; ours ends it cleanly.
_JAX_DEADLINE_MARGIN_S = 60


def _exit_with(message: str) -> None:
  logging.error("%s", message)
  os._exit(1)  # pylint: disable=protected-access


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    on_timeout: Callable[[str], None] = _exit_with,
) -> bool:
  """Joins the distributed runtime when asked; returns whether it did.

  Args:
    coordinator_address: "host:port" of process 0's coordinator service.
    num_processes: number of processes of the job (>= 1).
    process_id: this process's id in [0, num_processes).
    auto: let JAX detect the cluster (Cloud TPU, SLURM, Open MPI); the
      explicit fields, if given, override what it detects.
    timeout_s: seconds to wait for every process to join.
    on_timeout: called with the message (from a watchdog thread) when the
      processes have not all joined after timeout_s; it must end the process
      (the default logs and exits with status 1), since the XLA runtime
      cannot be stopped while it waits.

  Raises:
    ValueError: incomplete or inconsistent settings, or a start-up that
      failed (unreachable coordinator, a process missing after timeout_s).
  """
  explicit = (coordinator_address, num_processes, process_id)
  if not auto and all(v is None for v in explicit):
    return False
  if not auto and any(v is None for v in explicit):
    raise ValueError(
        "A multi-process run needs --coordinator_address, --num_processes "
        "and --process_id on every process (got "
        f"{coordinator_address!r}, {num_processes!r}, {process_id!r}); or "
        "pass --distributed_auto on a Cloud TPU pod, SLURM or Open MPI job."
    )
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be at least 1.")
  if (
      process_id is not None
      and num_processes is not None
      and not 0 <= process_id < num_processes
  ):
    raise ValueError(
        f"--process_id={process_id} is out of range for --num_processes="
        f"{num_processes}; give the processes the ids 0 .. "
        f"{num_processes - 1}."
    )
  if timeout_s < 1:
    raise ValueError(f"--distributed_timeout={timeout_s} must be >= 1 s.")
  # Only read by the CPU client; GPUs and TPUs use their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = (
      f"the coordinator at {coordinator_address}"
      if coordinator_address
      else "the cluster JAX detected"
  )
  fix = (
      "Start all processes with the same --coordinator_address and "
      "--num_processes and distinct --process_id values 0 .. N-1 (process "
      "0 hosts the coordinator), or raise --distributed_timeout."
  )
  watchdog = threading.Timer(
      timeout_s,
      on_timeout,
      args=(
          f"Not all processes joined the distributed runtime via {where} "
          f"within {timeout_s} s. {fix}",
      ),
  )
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(timeout_s) + _JAX_DEADLINE_MARGIN_S,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
    )
    jax.devices()  # Exchanges the topology now, under the watchdog.
  except Exception as e:  # XLA reports start-up failures as several types.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise ValueError(
        f"Joining the distributed runtime via {where} failed "
        f"({type(e).__name__}: {first_line[:300]}). {fix}"
    ) from None
  finally:
    watchdog.cancel()
  logging.info(
      "Process %d of %d: %d local, %d global devices.",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
  return True


def is_primary() -> bool:
  """True on the process that writes shared files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
