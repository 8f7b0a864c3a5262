"""A training run's metrics: TensorBoard events and `metrics.jsonl`.

TensorBoard scalars are written by :class:`ScalarWriter` with TensorBoard's
own event writer (no TensorFlow: a training run imports none).

Every log step and every epoch end writes one line of `metrics.jsonl` in the
workdir (process 0 only): the step, the metrics and the wall-clock time. A
resumed run first drops the lines written after the checkpoint it resumes
from, so that the file holds each step once.
"""

from __future__ import annotations

import json
import os
import socket
import time

from dssn_jax.runtime import distributed

METRICS_FILE = "metrics.jsonl"


class ScalarWriter:
  """TensorBoard scalars of one process: an event file in `logdir`
  (process 0), nothing elsewhere.

  Writes the records itself with TensorBoard's record framing: TensorBoard's
  own EventFileWriter opens files through TensorFlow when it is installed.
  """

  def __init__(self, logdir: str, *, enabled: bool = True):
    self._writer = None
    if enabled:
      # pylint: disable-next=g-import-not-at-top
      from tensorboard.summary.writer import record_writer

      name = (
          f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}."
          f"{os.getpid()}"
      )
      self._writer = record_writer.RecordWriter(
          open(os.path.join(logdir, name), "wb")  # pylint: disable=consider-using-with
      )
      self._write(file_version="brain.Event:2")

  def _write(self, step: int = 0, **fields) -> None:
    # pylint: disable-next=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2

    event = event_pb2.Event(wall_time=time.time(), step=int(step), **fields)
    self._writer.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars) -> None:
    """One event of `scalars` ({tag: number}) at `step`."""
    if self._writer is None:
      return
    # pylint: disable-next=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2

    summary = summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in scalars.items()
        ]
    )
    self._write(step, summary=summary)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def write_metrics(workdir, writer, step, metrics):
  """Scalars to TensorBoard, and one line of metrics.jsonl (process 0) with
  the step and the wall-clock time it was written (`wall_time`, seconds
  since the epoch)."""
  writer.write_scalars(step, metrics)
  if not distributed.is_primary():
    return
  line = {"step": step, **metrics, "wall_time": time.time()}
  with open(os.path.join(workdir, METRICS_FILE), "a") as f:
    f.write(json.dumps(line) + "\n")


def truncate_metrics(workdir, last_step):
  """Drops metric lines written after the checkpoint a run resumes from."""
  path = os.path.join(workdir, METRICS_FILE)
  if not distributed.is_primary() or not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line)
    except (ValueError, KeyError):
      pass  # A torn last line of a killed run.
  with open(path, "w") as f:
    f.writelines(kept)
