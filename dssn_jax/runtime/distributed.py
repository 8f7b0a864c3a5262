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
ValueError naming the fix after `timeout_s` instead of hanging; a coordinator
port in use and a process count other than the coordinator's are refused
with one line. A second process with an id already taken would make JAX's
coordination service abort every process of the job, in C++, so every
process claims its id with a lock file first (`process_ids`).

Once joined, the processes trust nothing about each other:

- `agree(what, record)` compares a record (the effective config, the
  computation record, the checkpoint step) across processes; a difference
  is a ValueError on every process naming the field, the processes and
  their values.
- `fail(message)` ends this process at once (no shutdown barrier that would
  wait for the others) after publishing its one-line error; every process
  runs a watcher thread that ends its own process with "process i failed:
  <message>; stopping" when it sees one. So an error on one process ends
  all of them within about a second, never a hang.

Both use the key-value store of JAX's coordination service, which only a
private attribute exposes (`_coordination_client`, the one place that
touches it).
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
import errno
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils

from dssn_jax.runtime import process_ids

# Seconds a process waits for all processes to join; then a clear error.
DEFAULT_TIMEOUT_S = 120
# A process that sends no heartbeat for this long is dead: the others stop
# rather than wait forever in a collective.
HEARTBEAT_TIMEOUT_S = 60
# JAX's own start-up deadline is later than ours: when it passes, the XLA
# runtime aborts the process with a C++ stack trace; ours ends it cleanly.
_JAX_DEADLINE_MARGIN_S = 60
# Seconds between two looks of the watcher at the failures of other processes.
WATCH_INTERVAL_S = 0.25
# Seconds a failing process 0 (whose exit takes the coordination service
# down) waits for the other processes to see its failure.
_ACKNOWLEDGE_S = 5.0
# Seconds without an answer from the coordination service after which the
# watcher of a process other than 0 concludes that process 0 is gone.
_COORDINATOR_LOST_S = 3.0
_PREFIX = "dssn_jax"

_state: dict[str, Any] = {"timeout_s": DEFAULT_TIMEOUT_S, "agreements": {}}
_exiting = threading.Lock()  # Held by the one thread that ends the process.


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
    workdir: str | None = None,
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
    workdir: the run's directory, shared by its hosts: where the processes
      claim their ids (`process_ids.lock_directory`).

  Raises:
    ValueError: incomplete or inconsistent settings, an id another process
      holds, or a start-up that failed (unreachable coordinator, a process
      missing after timeout_s).
  """
  explicit = (coordinator_address, num_processes, process_id)
  if not auto and all(v is None for v in explicit):
    return False
  _check_settings(
      coordinator_address, num_processes, process_id, auto, timeout_s
  )
  # Only read by the CPU client; GPUs and TPUs use their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if process_id == 0 and coordinator_address:
    _check_port_free(coordinator_address)
  if process_id is not None and coordinator_address:
    process_ids.claim(
        process_ids.lock_directory(workdir), coordinator_address, process_id
    )
  _join(coordinator_address, num_processes, process_id, timeout_s, on_timeout)
  _state["timeout_s"] = int(timeout_s)
  watch_for_failures()
  if num_processes is not None and num_processes != jax.process_count():
    fail(
        f"--num_processes={num_processes} on process {jax.process_index()}, "
        f"but the coordinator started a job of {jax.process_count()} "
        "processes; give every process the same --num_processes."
    )
  logging.info(
      "Process %d of %d: %d local, %d global devices.",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
  return True


def _check_settings(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    auto: bool,
    timeout_s: int,
) -> None:
  """Raises ValueError on incomplete or inconsistent settings of
  `initialize` (before anything starts)."""
  explicit = (coordinator_address, num_processes, process_id)
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


def _join(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    timeout_s: int,
    on_timeout: Callable[[str], None],
) -> None:
  """Calls jax.distributed.initialize under a watchdog that calls
  `on_timeout` after timeout_s; raises ValueError naming the fix when JAX
  reports a failed start-up."""
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


def is_primary() -> bool:
  """True on the process that writes shared files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _check_port_free(coordinator_address: str) -> None:
  """Raises ValueError when the coordinator's port is taken (JAX's service
  would crash the process with a segmentation fault)."""
  port = coordinator_address.rsplit(":", 1)[-1]
  try:
    port_number = int(port)
  except ValueError:
    raise ValueError(
        f"--coordinator_address={coordinator_address!r} must be host:port."
    ) from None
  # SO_REUSEADDR as the service itself binds: a closed socket still in
  # TIME_WAIT does not count, a listening one does.
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # No IPv6 on this machine.
      continue
    with probe:
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      try:
        probe.bind((host, port_number))
      except OSError as e:
        if e.errno != errno.EADDRINUSE:
          continue
        raise ValueError(
            f"Port {port_number} of --coordinator_address="
            f"{coordinator_address} is already in use on this machine "
            "(another job, or a process of this one still running?); "
            "choose a free port for every process."
        ) from None
      return  # The dual-stack IPv6 bind covers IPv4 as well.


def _coordination_client():
  """JAX's client of the coordination service (None outside a multi-process
  run).

  Private API: `jax.distributed` offers no public handle on the service's
  key-value store, which is the only channel that works while a process is
  blocked in a collective or has not reached one. Kept here alone; a JAX
  without it makes `agree` and the watcher fall back to nothing (a clear
  error rather than silence).
  """
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return getattr(jax_distributed.global_state, "client", None)


def fail(message: str, exit_code: int = 1, prefix: str = "error: ") -> None:
  """Ends this process now with `error: message`, after telling the others.

  Skips Python's exit handlers: JAX's shutdown barrier would wait for
  processes that the failure is about to stop. Process 0 hosts the
  coordination service, so it waits (at most a few seconds) until every
  other process has seen the failure before its exit takes the service down.

  Args:
    message: one line, the error.
    exit_code: the process's exit status.
    prefix: what the line starts with.
  """
  if not _exiting.acquire(blocking=False):
    time.sleep(60)  # Another thread is ending the process already.
  write_line(f"{prefix}{message}")
  client = _coordination_client()
  if client is not None and jax.process_count() > 1:
    me = jax.process_index()
    try:
      client.key_value_set(
          f"{_PREFIX}/failed/{me}", message[:2000], allow_overwrite=True
      )
      if me == 0:
        _wait_for_acknowledgements(client)
    except Exception:  # pylint: disable=broad-except
      pass  # The service is gone already: the others see that instead.
  os._exit(exit_code)  # pylint: disable=protected-access


def _wait_for_acknowledgements(client) -> None:
  deadline = time.monotonic() + _ACKNOWLEDGE_S
  others = jax.process_count() - 1
  while time.monotonic() < deadline:
    if len(client.key_value_dir_get(f"{_PREFIX}/stopping/")) >= others:
      return
    time.sleep(WATCH_INTERVAL_S / 2)


def write_line(line: str) -> None:
  """Writes one line to stderr, on a line of its own even when a progress
  bar (tqdm, which leaves the cursor at the end of its line) is showing."""
  progress = getattr(sys.modules.get("tqdm"), "tqdm", None)
  for bar in list(getattr(progress, "_instances", ())):
    try:
      bar.close()  # Its last state, then a new line (not after ours).
    except Exception:  # pylint: disable=broad-except
      pass
  sys.stdout.flush()
  sys.stderr.write(line.rstrip("\n") + "\n")
  sys.stderr.flush()


def watch_for_failures() -> threading.Thread | None:
  """Starts the daemon thread that stops this process when another fails
  (see `fail`) or, on processes other than 0, when process 0 is gone."""
  if _state.get("watcher") is not None:
    return _state["watcher"]
  client = _coordination_client()
  if client is None or jax.process_count() == 1:
    return None
  thread = threading.Thread(
      target=_watch, args=(client,), name="dssn_jax failures", daemon=True
  )
  _state["watcher"] = thread
  # Before JAX's own exit handler (registered earlier, run later), which
  # shuts the coordination service down.
  atexit.register(stop_watching)
  thread.start()
  return thread


def _watch(client) -> None:
  me = jax.process_index()
  unanswered_since = None
  while True:
    time.sleep(WATCH_INTERVAL_S)
    if _state.get("stopped"):
      return
    try:
      failed = client.key_value_dir_get(f"{_PREFIX}/failed/")
    except Exception:  # pylint: disable=broad-except
      if _state.get("stopped") or me == 0:
        continue
      unanswered_since = unanswered_since or time.monotonic()
      if time.monotonic() - unanswered_since > _COORDINATOR_LOST_S:
        _stop(
            "process 0 (the coordinator) is gone; stopping. Rerun the same "
            "command on every process to resume."
        )
      continue
    unanswered_since = None
    failed = [(k, v) for k, v in failed if not k.endswith(f"/{me}")]
    if failed:
      key, message = sorted(failed)[0]
      other = key.rsplit("/", 1)[-1]
      try:
        client.key_value_set(f"{_PREFIX}/stopping/{me}", "1")
      except Exception:  # pylint: disable=broad-except
        pass
      if message.endswith(".") and not message.endswith(".."):
        message = message[:-1]  # The line goes on.
      _stop(f"process {other} failed: {message}; stopping")


def _stop(message: str) -> None:
  if not _exiting.acquire(blocking=False):
    return  # The main thread is ending the process with its own error.
  write_line(f"error: {message}")
  os._exit(1)  # pylint: disable=protected-access


def stop_watching() -> None:
  """Stops the watcher before a normal exit (the coordination service shuts
  down then, which the watcher would take for a lost coordinator)."""
  _state["stopped"] = True


def agree(what: str, record: dict[str, Any]) -> None:
  """Checks that every process has the same `record`; a no-op alone.

  Args:
    what: names the check in the error (e.g. "training start").
    record: JSON-serializable; nested dicts are compared field by field.

  Raises:
    ValueError: on every process alike, naming the first field (in sorted
      order) that differs, the processes and their values; or when a
      process does not reach the check within the start-up timeout.
  """
  if jax.process_count() == 1:
    return
  client = _coordination_client()
  if client is None:
    raise ValueError(
        "This JAX has no coordination-service client to compare the "
        "processes' settings with; use the JAX version of constraints.txt."
    )
  count = _state["agreements"].get(what, 0)
  _state["agreements"][what] = count + 1
  prefix = f"{_PREFIX}/agree/{what}/{count}/"
  me = jax.process_index()
  client.key_value_set(prefix + str(me), json.dumps(record, sort_keys=True))
  records = {}
  for i in range(jax.process_count()):
    try:
      records[i] = _flatten(
          json.loads(
              client.blocking_key_value_get(
                  prefix + str(i), _state["timeout_s"] * 1000
              )
          )
      )
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f"Process {i} did not reach the {what} check within "
          f"{_state['timeout_s']} s ({type(e).__name__}); is it running the "
          "same command?"
      ) from None
  _compare(what, records)


def _flatten(record, prefix: str = "") -> dict[str, Any]:
  if not isinstance(record, dict):
    return {prefix: record}
  flat = {}
  for key, value in record.items():
    flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return flat


def _compare(what: str, records: dict[int, dict[str, Any]]) -> None:
  fields = sorted(set().union(*records.values()))
  missing = object()
  for field in fields:
    values = {i: r.get(field, missing) for i, r in records.items()}
    if (
        len(
            {
                json.dumps(v, sort_keys=True, default=str)
                for v in values.values()
            }
        )
        > 1
    ):
      shown = ", ".join(
          f"process {i} has "
          + ("no such field" if v is missing else json.dumps(v))
          for i, v in values.items()
      )
      raise ValueError(
          f"The processes disagree on {field} at the {what}: {shown}. Start "
          "every process with the same command, environment and workdir."
      )


# Config fields that name a host's own copy of shared inputs: processes on
# different hosts may spell them differently.
HOST_LOCAL_FIELDS = ("data_dir",)


def agree_on_run(what: str, config, computation: dict[str, str], **facts):
  """`agree` on the run's effective config (less HOST_LOCAL_FIELDS), its
  computation record (`xla_options.computation_record`) and `facts` (e.g.
  the checkpoint step a process resumes from).

  Args:
    what: names the check in the error ("training start").
    config: an ml_collections ConfigDict.
    computation: backend, versions, compute dtype and XLA options.
    **facts: JSON-serializable values every process must share.
  """
  if jax.process_count() == 1:
    return
  settings = json.loads(config.to_json_best_effort())
  for field in HOST_LOCAL_FIELDS:
    settings.pop(field, None)
  agree(what, {"config": settings, "computation": computation, **facts})
