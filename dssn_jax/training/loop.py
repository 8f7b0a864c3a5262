"""The training skeleton that classifiers and denoisers share.

`train(config, workdir, trainer)` starts a run in workdir or resumes the one
there (`start_run`), then steps it to the end (`run_steps`): one jitted step
on a global mesh of all devices of all processes (the batch split along
"data", the state replicated), an evaluation, a metrics line and a checkpoint
at the end of every epoch, and a checkpoint every `checkpoint_every_steps`
steps into an epoch. A `Trainer` is what a specialisation brings: its
checkpoint record, its initial state, its train and evaluation steps and the
metrics of its evaluation (`classifier.trainer`, `denoiser.trainer`).

Checkpoints are saved and restored by all processes together; only process
0 writes config.json, metrics.jsonl and TensorBoard events. Every random
choice is a function of the config's seed and the step number, and every
checkpoint holds the input pipeline's state (`batches.train_batches`), so a
run killed and resumed from its last checkpoint ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import os
import time
from typing import Any

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import tqdm

from dssn_jax.core import placement
from dssn_jax.core import smoothing
from dssn_jax.data import datasets
from dssn_jax.data import train_input
from dssn_jax.runtime import config_checks
from dssn_jax.runtime import distributed
from dssn_jax.runtime import xla_options
from dssn_jax.training import batches
from dssn_jax.training import checkpoints
from dssn_jax.training import metrics as metrics_lib
from dssn_jax.training import run_config


class TrainState(train_state.TrainState):
  batch_stats: Any


def new_state(model, config, input_shape, tx) -> TrainState:
  """A fresh TrainState of a Flax model: variables initialized from
  config.seed for inputs of input_shape (H, W, C), optimizer tx."""
  variables = model.init(
      jax.random.key(config.seed),
      jnp.zeros((1,) + tuple(input_shape)),
      train=False,
  )
  return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=tx,
  )


def training_noise(config):
  """(dataset info, smoothing spec, DSSN offsets (H, W, C)) of a config's
  training noise, for classifiers and denoisers alike."""
  info = datasets.dataset_info(config.dataset)
  spec = smoothing.SmoothingSpec(config.sigma, config.q)
  offsets = smoothing.make_offsets(
      config.offsets_seed, info.input_shape, spec.levels, config.offsets_layout
  )
  return info, spec, offsets


def check_training_config(config) -> None:
  """Checks the fields every trainer reads (classifiers and denoisers):
  dataset, integer fields, q, data_shards and the batch size."""
  datasets.dataset_info(config.dataset)  # Unknown dataset -> ValueError.
  config_checks.check_integer_fields(
      config,
      [
          f
          for f in (
              config_checks.SENTINEL_FIELDS
              + config_checks.POSITIVE_FIELDS
              + config_checks.NON_NEGATIVE_FIELDS
              + config_checks.WORKER_FIELDS
          )
          if not f.startswith("certify.")
      ],
  )
  config_checks.check_compute_dtype(config)
  if config.q != 255:
    raise ValueError(
        f"q={config.q}, but the input pipelines yield 8-bit "
        f"images (q=255); set --config.q=255."
    )
  if config.get("data_shards", -1) == 0 or config.get("data_shards", -1) < -1:
    raise ValueError(
        f"data_shards={config.data_shards}; use a positive "
        f"number or -1 (one shard per process)."
    )
  if config.batch_size % jax.device_count():
    raise ValueError(
        f"batch_size={config.batch_size} must be a multiple of the "
        f"{jax.device_count()} devices."
    )


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a classifier or denoiser trainer brings to the shared loop.

  Attributes:
    metadata: the record every checkpoint of the run carries.
    resume_fields: fields of `metadata` that a resumed run must share with
      its checkpoint (a difference is a ValueError naming the fix).
    init_state: total_steps -> a fresh TrainState; traced under jit and
      placed on the global mesh, replicated.
    train_step: (state, batch, key, *inputs) -> (state, metrics), jitted by
      the loop; batch: {"image": (B, H, W, C) uint8, "label": (B,)}, key:
      the run's training key (the step folds in state.step).
    eval_step: (state, batch, key, *inputs) -> masked sums over the batch,
      with a "count" (`batches.eval_sums`).
    eval_metrics: the eval_step sums over the evaluation split -> the
      epoch's evaluation metrics.
    epoch_message: the line logged after each epoch, from its metrics.
    description: the progress bar's label.
    inputs: further arguments of both steps (a frozen classifier's
      variables), placed on the mesh replicated.
  """

  metadata: dict[str, Any]
  resume_fields: tuple[str, ...]
  init_state: Callable[[int], TrainState]
  train_step: Callable[..., tuple[Any, dict[str, jax.Array]]]
  eval_step: Callable[..., dict[str, jax.Array]]
  eval_metrics: Callable[[dict[str, Any]], dict[str, Any]]
  epoch_message: Callable[[dict[str, Any]], str]
  description: str
  inputs: tuple[Any, ...] = ()


def train(config, workdir: str, trainer: Trainer) -> TrainState:
  """Trains (or resumes) a run of `trainer`; checkpoints every epoch.

  Args:
    config: a config of configs/ (see configs/common.py for the fields),
      checked by the trainer.
    workdir: directory for checkpoints/, metrics.jsonl, TensorBoard events
      and config.json; an existing run there is resumed.
    trainer: the classifier's or the denoiser's part of the run.

  Returns:
    The final training state.
  """
  run = start_run(
      config,
      workdir,
      trainer.metadata,
      trainer.resume_fields,
      trainer.init_state,
  )
  inputs = jax.device_put(trainer.inputs, run.replicated)
  train_step, eval_step = jit_steps(trainer, run.batch_sharding.mesh)
  eval_cache = {}
  return run_steps(
      run,
      lambda state, batch: train_step(state, batch, run.train_key, *inputs),
      config=config,
      workdir=workdir,
      desc=trainer.description,
      evaluate_epoch=lambda state, done: trainer.eval_metrics(
          batches.eval_sums(
              eval_step,
              state,
              config,
              run.batch_sharding,
              jax.random.fold_in(run.eval_key, done),
              *inputs,
              cache=eval_cache,
          )
      ),
      epoch_message=trainer.epoch_message,
  )


def jit_steps(trainer: Trainer, mesh) -> tuple[Any, Any]:
  """The trainer's (train_step, eval_step), jitted as `train` runs them on
  the mesh: the state, key and inputs replicated, the batch split along
  "data", the state donated. Nothing is placed or compiled: AOT compilation
  (`dssn_jax.runs.aot`) lowers the same jitted step for compile-only
  devices."""
  replicated = NamedSharding(mesh, P())
  shardings = (replicated, NamedSharding(mesh, P("data")), replicated) + (
      replicated,
  ) * len(trainer.inputs)
  train_step = jax.jit(
      trainer.train_step,
      in_shardings=shardings,
      out_shardings=(replicated, replicated),
      donate_argnums=0,
  )
  return train_step, jax.jit(trainer.eval_step, in_shardings=shardings)


def make_workdir(workdir: str) -> None:
  """Creates workdir; a path that is a file or not writable is a ValueError
  (an OSError deep inside Orbax would only name the symptom)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(
        f"--workdir {workdir!r} is a file, not a directory; "
        f"pass a directory (it is created if missing)."
    )
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(
        f"Cannot create --workdir {workdir!r} ({e.strerror}); "
        f"pass a directory you can write to."
    ) from e
  if not os.access(workdir, os.W_OK):
    raise ValueError(
        f"--workdir {workdir!r} is not writable; pass a "
        f"directory you can write to."
    )


@dataclasses.dataclass(frozen=True)
class TrainingRun:
  """A training run set up to start or resume (`start_run`)."""

  state: Any  # The state to step from (restored when resuming).
  checkpointer: checkpoints.Checkpointer
  metadata: dict[str, Any]  # The checkpoints' record, with data_shards.
  shards: int  # Training-data shards (`data_shards`).
  start_step: int
  # The training-data iterators' states at start_step ({shard: state}, this
  # process's shards); None: a fresh run, or a checkpoint without them.
  data_state: dict[int, Any] | None
  total_steps: int
  steps_per_epoch: int
  replicated: NamedSharding  # The state's and the keys' sharding.
  batch_sharding: NamedSharding  # Batches: split along "data".
  train_key: jax.Array
  eval_key: jax.Array


def start_run(
    config,
    workdir: str,
    metadata: dict[str, Any],
    resume_fields,
    init_state: Callable[[int], TrainState],
) -> TrainingRun:
  """Sets up a new training run in workdir, or resumes the one there.

  Args:
    config: the run's config (fields of configs/common.py).
    workdir: the run's directory (made if missing); only process 0 writes
      its config.json.
    metadata: the record every checkpoint of the run carries.
    resume_fields: fields of `metadata` that a resumed run must share with
      its checkpoint (a difference is a ValueError naming the fix).
    init_state: total_steps -> a fresh TrainState; traced under jit and
      placed on the global mesh, replicated.

  Returns:
    The TrainingRun: state at its last checkpoint (or fresh), schedule,
    shardings and the training and evaluation keys (functions of
    config.seed).
  """
  make_workdir(workdir)
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  stored = (
      checkpointer.metadata()
      if checkpointer.latest_step() is not None
      else None
  )
  # All processes train one run: same settings, computation and step.
  distributed.agree_on_run(
      "training start",
      config,
      xla_options.computation_record(config.get("compute_dtype", "float32")),
      checkpoint_step=checkpointer.latest_step(),
  )
  if stored is not None:
    checkpoints.check_matches(
        stored,
        metadata,
        resume_fields,
        what=f"The checkpoint in {workdir!r}",
        fix="Resume with the checkpoint's values, or use a new --workdir.",
    )
  # Every other setting that changes the result too (config.json's history).
  run_config.check_and_record(
      config,
      workdir,
      checkpointer.latest_step(),
      write=distributed.is_primary(),
  )
  shards = batches.data_shards(config, stored, workdir)
  steps_per_epoch = (
      config.steps_per_epoch
      if config.steps_per_epoch > 0
      else train_input.train_steps_per_epoch(
          config.dataset,
          batch_size=config.batch_size,
          data_dir=config.data_dir,
          process_count=shards,
      )
  )
  total_steps = config.num_epochs * steps_per_epoch
  mesh = placement.make_mesh()
  replicated = NamedSharding(mesh, P())
  state = jax.jit(lambda: init_state(total_steps), out_shardings=replicated)()
  data_state = None
  if stored is not None:
    state = checkpointer.restore(state)
    data_state = checkpointer.data_state(batches.process_shards(shards))
    logging.info("Resuming from step %d.", int(state.step))
  start_step = int(state.step)
  metrics_lib.truncate_metrics(workdir, start_step)
  # Made on the global mesh: device_put cannot reach other processes' devices.
  train_key, eval_key = jax.jit(
      lambda: tuple(jax.random.split(jax.random.key(config.seed), 2)),
      out_shardings=replicated,
  )()
  return TrainingRun(
      state=state,
      checkpointer=checkpointer,
      metadata={**metadata, "data_shards": shards},
      shards=shards,
      start_step=start_step,
      data_state=data_state,
      total_steps=total_steps,
      steps_per_epoch=steps_per_epoch,
      replicated=replicated,
      batch_sharding=NamedSharding(mesh, P("data")),
      train_key=train_key,
      eval_key=eval_key,
  )


def _window_summary(train_metrics, images: int, start: float):
  """Mean training metrics (`train_<name>`) of a log window and its
  images/s since `start` (a time.perf_counter() reading)."""
  summary = {
      f"train_{k}": float(np.mean([m[k] for m in train_metrics]))
      for k in train_metrics[0]
  }
  elapsed = time.perf_counter() - start
  summary["train_images_per_second"] = images / max(elapsed, 1e-9)
  return summary


def _timed_evaluation(evaluate_epoch, state, done: int) -> dict[str, Any]:
  """`evaluate_epoch(state, done)` with its seconds (`eval_seconds`)."""
  start = time.perf_counter()
  metrics = evaluate_epoch(state, done)
  return {**metrics, "eval_seconds": time.perf_counter() - start}


def mid_epoch_checkpoint(config, done: int, steps_per_epoch: int) -> bool:
  """Whether a run saves a checkpoint after `done` steps inside an epoch:
  every `config.checkpoint_every_steps` steps into each epoch (0: never;
  epoch ends are saved anyway)."""
  every = config.get("checkpoint_every_steps", 0)
  into_epoch = done % steps_per_epoch
  return every > 0 and into_epoch > 0 and into_epoch % every == 0


def run_steps(
    run: TrainingRun,
    train_step: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]],
    *,
    config,
    workdir: str,
    desc: str,
    evaluate_epoch: Callable[[Any, int], dict[str, Any]],
    epoch_message: Callable[[dict[str, Any]], str],
):
  """The training loop shared by classifiers and denoisers.

  Runs steps run.start_step .. run.total_steps - 1 on the config's training
  data (`batches.train_batches`): logs the mean training metrics and
  images/s every `config.log_every_steps` steps; at the end of every epoch
  evaluates (`evaluate_epoch(state, steps_done)`), writes metrics (with the
  epoch's seconds of stepping and of evaluation, `train_seconds` and
  `eval_seconds`), logs `epoch_message` and saves a checkpoint; saves one
  inside an epoch too where `mid_epoch_checkpoint` says so (the time saving
  takes is not counted as stepping). Dispatch
  runs at most one step ahead, so the progress bar counts finished steps
  and a log step never waits for a backlog.

  Args:
    run: the run set up by `start_run`.
    train_step: (state, global batch) -> (state, metrics), jitted.
    config: the run's config (batch_size, log_every_steps,
      checkpoint_every_steps, data fields).
    workdir: where metrics go (metrics.jsonl, TensorBoard).
    desc: the progress bar's label.
    evaluate_epoch: evaluation metrics at the end of an epoch.
    epoch_message: the line logged after each epoch, from its metrics.

  Returns:
    The final state.
  """
  writer = metrics_lib.ScalarWriter(workdir, enabled=distributed.is_primary())
  local_batches = batches.train_batches(
      config, run.shards, run.start_step, run.data_state
  )
  start_step, steps_per_epoch = run.start_step, run.steps_per_epoch
  state = run.state
  progress = tqdm.tqdm(
      total=run.total_steps,
      initial=start_step,
      unit="step",
      desc=desc,
      disable=jax.process_index() > 0,
  )
  window_start, window_images, train_metrics = time.perf_counter(), 0, []
  epoch_start = window_start  # Stepping time of the epoch, from here.
  previous = None  # The last step's metrics, still being computed.
  for step in range(start_step, run.total_steps):
    batch = batches.global_batch(run.batch_sharding, next(local_batches))
    state, metrics = train_step(state, batch)
    if previous is not None:
      jax.block_until_ready(previous)
      progress.update(1)
    previous = metrics
    done = step + 1
    if step == start_step:  # Leave compilation out of the throughput.
      jax.block_until_ready(state)
      window_start = epoch_start = time.perf_counter()
    else:
      window_images += config.batch_size
    train_metrics.append(metrics)
    if done % config.log_every_steps == 0 or done % steps_per_epoch == 0:
      jax.block_until_ready(metrics)
      progress.update(1)
      previous = None
      summary = _window_summary(train_metrics, window_images, window_start)
      progress.set_postfix(
          loss=f"{summary['train_loss']:.4f}",
          img_s=f"{summary['train_images_per_second']:.0f}",
      )
      if done % steps_per_epoch:
        metrics_lib.write_metrics(workdir, writer, done, summary)
      window_start, window_images, train_metrics = time.perf_counter(), 0, []
    if mid_epoch_checkpoint(config, done, steps_per_epoch):
      saving = time.perf_counter()
      run.checkpointer.save(
          done, state, run.metadata, data_state=local_batches.get_state()
      )
      saving = time.perf_counter() - saving  # Not stepping time.
      window_start, epoch_start = window_start + saving, epoch_start + saving
    if done % steps_per_epoch == 0:
      summary["train_seconds"] = time.perf_counter() - epoch_start
      summary.update(_timed_evaluation(evaluate_epoch, state, done))
      summary["epoch"] = done // steps_per_epoch
      metrics_lib.write_metrics(workdir, writer, done, summary)
      if distributed.is_primary():
        progress.clear()  # The line goes above the bar, not into it.
        logging.info("%s", epoch_message(summary))
        progress.refresh()
      run.checkpointer.save(
          done, state, run.metadata, data_state=local_batches.get_state()
      )
      # Do not count evaluation or saving as stepping time.
      window_start = epoch_start = time.perf_counter()
  if previous is not None:
    jax.block_until_ready(previous)
    progress.update(1)
  progress.close()
  writer.close()
  run.checkpointer.close()
  return state
