"""A training run's metrics: TensorBoard events and `metrics.jsonl`.

Every log step and every epoch end writes one line of `metrics.jsonl` in the
workdir (process 0 only): the step, the metrics and the wall-clock time. A
resumed run first drops the lines written after the checkpoint it resumes
from, so that the file holds each step once.
"""

from __future__ import annotations

import json
import os
import time

from dssn_jax.runtime import distributed

METRICS_FILE = "metrics.jsonl"


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
