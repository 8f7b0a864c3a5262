"""The batches of a training run: training-data shards, global batches and
sums over the evaluation split.

The training data is read in `data_shards` disjoint shards (default: one per
process, fixed when a run starts and stored in its checkpoints); each process
reads its share of the shards and its rows of every global batch, so the
batches do not depend on how many processes read them. Each shard is a
Grain iterator whose state goes into every checkpoint (`ShardBatches`).
Evaluation sums a jitted step's masked per-batch sums on the device and
reads them once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dssn_jax.data import datasets
from dssn_jax.data import eval_input
from dssn_jax.data import train_input

# Evaluation splits up to this size (uint8 images) are decoded once per
# training run and kept in host memory: decoding them every epoch costs more
# than evaluating them (Fashion-MNIST's test split: 7.8 MB).
EVAL_CACHE_BYTES = 256 * 2**20


def data_shards(config, stored: dict[str, Any] | None, workdir: str) -> int:
  """The number of training-data shards of the run (see module doc).

  A new run takes `config.data_shards` (-1: one per process); a resumed run
  keeps the number its checkpoint was written with, since another number
  would reorder the data. Every process must read whole shards.
  """
  shards = config.get("data_shards", -1)
  shards = shards if shards > 0 else None
  if stored is not None and stored.get("data_shards") is not None:
    if shards is not None and shards != stored["data_shards"]:
      raise ValueError(
          f"The run in {workdir!r} reads its training data in "
          f"{stored['data_shards']} shards, but the config asks for "
          f"{shards}. Resume with --config.data_shards="
          f"{stored['data_shards']} (or -1), or use a new --workdir."
      )
    shards = int(stored["data_shards"])
  shards = shards or jax.process_count()
  if shards % jax.process_count():
    raise ValueError(
        f"The run in {workdir!r} reads its training data in {shards} shards, "
        f"which {jax.process_count()} processes cannot split evenly. Run it "
        f"with a number of processes that divides {shards}, or start a new "
        f"--workdir."
    )
  if config.batch_size % shards:
    raise ValueError(
        f"batch_size={config.batch_size} must be a multiple of the {shards} "
        f"training-data shards (data_shards, default one per process)."
    )
  return shards


class ShardBatches:
  """This process's rows of every global batch: the concatenated batches of
  its consecutive training-data shards (numpy, uint8 images), one Grain
  iterator per shard.

  ``get_state()`` is ``{shard: its iterator's state}`` for this process's
  shards (JSON-able; saved with each checkpoint, one file per shard, so a
  run resumes on any process count that divides `data_shards`);
  ``set_state`` restores any subset of the shards that covers this
  process's.
  """

  def __init__(self, iterators: dict[int, Any]):
    self._iterators = iterators

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._iterators.values()]
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict[int, Any]:
    return {s: it.get_state() for s, it in self._iterators.items()}

  def set_state(self, states: dict[int, Any]) -> None:
    for s, it in self._iterators.items():
      it.set_state(states[s])


def process_shards(shards: int) -> list[int]:
  """The training-data shards this process reads (consecutive)."""
  per_process = shards // jax.process_count()
  first = jax.process_index() * per_process
  return list(range(first, first + per_process))


def _decode_workers(config) -> int | None:
  """config.decode_workers as `train_input.train_dataset` takes it: None for
  the dataset's default (-1)."""
  workers = config.get("decode_workers", -1)
  return None if workers == -1 else workers


def train_batches(
    config, shards: int, start_step: int, states: dict[int, Any] | None
) -> ShardBatches:
  """This process's rows of every global batch from `start_step` on, or
  from the shard iterators' saved `states` (a checkpoint's) when given."""
  batches = ShardBatches(
      {
          shard: train_input.train_dataset(
              config.dataset,
              batch_size=config.batch_size,
              seed=config.seed,
              data_dir=config.data_dir,
              start_step=0 if states is not None else start_step,
              workers=_decode_workers(config),
              process_index=shard,
              process_count=shards,
          )
          for shard in process_shards(shards)
      }
  )
  if states is not None:
    batches.set_state(states)
  return batches


def global_batch(sharding, batch):
  """A process-local numpy batch as one global array split over devices."""
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, a), batch
  )


def eval_batches(config, cache: dict | None):
  """The evaluation batches of the config, kept in `cache` (one training
  run's dict) when they are small enough (`EVAL_CACHE_BYTES`)."""
  max_examples = config.eval_max_examples
  if cache is not None and "batches" in cache:
    return cache["batches"]
  batches = eval_input.eval_dataset(
      config.dataset,
      batch_size=config.eval_batch_size,
      max_examples=None if max_examples < 0 else max_examples,
      data_dir=config.data_dir,
  )
  info = datasets.dataset_info(config.dataset)
  size = batches.num_examples * int(np.prod(info.input_shape))
  kept = (
      {k: batch[k] for k in ("image", "label", "mask")} for batch in batches
  )
  if cache is None or size > EVAL_CACHE_BYTES:
    return kept
  cache["batches"] = list(kept)
  return cache["batches"]


def eval_sums(
    eval_step, state, config, sharding, key, *args, cache: dict | None = None
) -> dict[str, int | float]:
  """Sums of eval_step's outputs over (a prefix of) the evaluation split.

  `eval_step(state, batch, key, *args)` returns masked per-batch sums (a
  dict of scalars with a "count"); they are added on the device and read
  once, so the batches are dispatched back to back. `cache`: a dict kept
  across the evaluations of one run, which then decode small evaluation
  splits only once. An empty split gives {"count": 0}.
  """
  totals = None
  for i, batch in enumerate(eval_batches(config, cache)):
    sums = eval_step(
        state, global_batch(sharding, batch), jax.random.fold_in(key, i), *args
    )
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    return {"count": 0}
  return {k: np.asarray(v).item() for k, v in jax.device_get(totals).items()}
