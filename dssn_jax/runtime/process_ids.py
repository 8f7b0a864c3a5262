"""One process per id: a lock file claims a process id before the join.

A second process started with an id that another process of the job already
holds makes JAX's coordination service abort every process of the job with
a C++ fatal error, which Python cannot intercept (the client's error
callback is not replaceable from Python in jaxlib 0.10.2). So every process
claims its id first, with an exclusive `flock` on a lock file named after
the coordinator address and the id, held until the process ends (the kernel
releases it on any exit, SIGKILL included, so no stale claim survives a
crash). The second claimant of an id ends at once with one line; the job's
other processes never see it.

Where the lock files live decides which duplicates are caught: in the run's
workdir (shared by every host of a multi-host run, which writes its
checkpoints and results there), a duplicate on any host that mounts it with
working POSIX locks (local disks, NFSv4); without a workdir (or one on a
remote URL such as gs://), in this machine's temporary directory, a
duplicate on the same machine only.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile
import time

# Open lock files of this process, kept open (the claim) until it ends.
_held: list[int] = []


def lock_directory(workdir: str | None) -> str:
  """The directory of the lock files for a run in `workdir` (or None)."""
  if workdir and "://" not in workdir and not os.path.isfile(workdir):
    return os.path.join(workdir, ".process_ids")
  return os.path.join(tempfile.gettempdir(), "dssn_jax_process_ids")


def claim(directory: str, coordinator_address: str, process_id: int) -> None:
  """Claims `process_id` of the job coordinated at `coordinator_address`.

  Args:
    directory: where the lock files live (see `lock_directory`); made if
      missing.
    coordinator_address: "host:port" of the job (part of the lock's name,
      so that jobs of other coordinators never collide).
    process_id: the id this process was given.

  Raises:
    ValueError: another live process holds the id, naming it and the fix.
  """
  os.makedirs(directory, exist_ok=True)
  job = re.sub(r"[^A-Za-z0-9.-]", "_", coordinator_address)
  path = os.path.join(directory, f"{job}-{process_id}.lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
    os.close(fd)
    raise ValueError(
        f"--process_id={process_id} is already taken by another process of "
        f"the job at {coordinator_address} ({holder or 'lock ' + path}); "
        "give every process its own id 0 .. N-1."
    ) from None
  os.ftruncate(fd, 0)
  stamp = time.strftime("%Y-%m-%d %H:%M:%S")
  os.pwrite(
      fd, f"pid {os.getpid()} on {socket.gethostname()}, {stamp}".encode(), 0
  )
  _held.append(fd)
