"""Which share of the data one process reads, and how many rows it yields.

Batch sizes given to the pipelines are GLOBAL (over all JAX processes, or
all training-data shards); each process (shard) yields ``batch_size //
process_count`` rows from its own disjoint share of the data, ready for
``jax.make_array_from_process_local_data``. No TensorFlow here.
"""

from __future__ import annotations

import numpy as np


def process_and_count(
    process_index: int | None, process_count: int | None
) -> tuple[int, int]:
  """(process index, process count), JAX's where None, checked.

  Raises:
    ValueError: the index is not in [0, count).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = (
        jax.process_index() if process_index is None else process_index
    )
    process_count = (
        jax.process_count() if process_count is None else process_count
    )
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} not in "
        f"[0, process_count={process_count})"
    )
  return process_index, process_count


def local_batch_size(batch_size: int, process_count: int) -> int:
  """Rows of a global batch on one process.

  Raises:
    ValueError: batch_size is not a positive integer divisible by
      process_count.
  """
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(
        f"batch_size must be a positive integer, got {batch_size!r}"
    )
  if batch_size % process_count:
    raise ValueError(
        f"batch_size={batch_size} (global) is not divisible by the "
        f"{process_count} processes"
    )
  return int(batch_size) // process_count
