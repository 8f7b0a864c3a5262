"""Training base classifiers under splitting noise.

`train_and_evaluate(config, workdir)` trains the config's model on its dataset
under the config's noise (docs/design.md, section 2): `dssn` draws one k per
example with the classifier's own offsets, `ssn` independent splits, `uniform`
additive noise, `none` clean inputs; with `stability`, the loss is
`CE(f(xt1), y) + gamma * KL(p(xt1) || p(xt2))` over two independent draws.

Data parallel over all devices of all processes: one jitted step on a global
mesh, the batch split along "data", the state replicated. The training data
is read in `data_shards` disjoint shards (default: one per process, fixed when
a run starts and stored in its checkpoints); each process reads its share of
the shards and its rows of every global batch, so the batches do not depend
on how many processes read them (the parameters only through the order in
which cross-process sums are rounded). Checkpoints are saved and restored by
all processes together; only process 0 writes config.json, metrics.jsonl and
TensorBoard events. Every random choice is a function of the config's seed
and the step number, and the input pipeline can skip to any step, so a run
killed and resumed from its last checkpoint ends with the same parameters as
an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from absl import logging
from flax.training import train_state
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from dssn_jax.core import certify
from dssn_jax.training import checkpoints
from dssn_jax.runtime import config_checks
from dssn_jax.runtime import distributed
from dssn_jax.data import input_pipeline
from dssn_jax import models
from dssn_jax.core import smoothing

METRICS_FILE = "metrics.jsonl"
# Fields a resumed run must share with its checkpoint.
RESUME_FIELDS = (
    checkpoints.SMOOTHING_FIELDS
    + checkpoints.MODEL_FIELDS
    + ("stability", "stability_gamma")
)


class TrainState(train_state.TrainState):
  batch_stats: Any


def stability_loss(logits_1, logits_2, labels, gamma: float):
  """`CE(f(xt1), y) + gamma * KL(p(xt1) || p(xt2))`, batch means.

  Args:
    logits_1, logits_2: (B, C) logits of two noise draws of the same inputs.
    labels: (B,) int labels.
    gamma: weight of the KL term.

  Returns:
    (loss, (cross_entropy, kl)) scalars.
  """
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
      logits_1, labels
  ).mean()
  log_p1 = jax.nn.log_softmax(logits_1)
  log_p2 = jax.nn.log_softmax(logits_2)
  kl = jnp.sum(jnp.exp(log_p1) * (log_p1 - log_p2), axis=-1).mean()
  return cross_entropy + gamma * kl, (cross_entropy, kl)


def create_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum, coupled weight decay, cosine schedule."""
  schedule = optax.cosine_decay_schedule(
      config.learning_rate, max(1, total_steps)
  )
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
  )


def check_training_config(config) -> None:
  """Checks the fields every trainer reads (classifiers and denoisers):
  dataset, integer fields, q, data_shards and the batch size."""
  input_pipeline.dataset_info(config.dataset)  # Unknown dataset -> ValueError.
  config_checks.check_integer_fields(
      config,
      [
          f
          for f in config_checks.SENTINEL_FIELDS + config_checks.POSITIVE_FIELDS
          if not f.startswith("certify.")
      ],
  )
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


def _check_config(config) -> None:
  check_training_config(config)
  if config.model not in models.MODEL_NAMES:
    raise ValueError(
        f"Unknown model {config.model!r}; expected one of "
        f"{models.MODEL_NAMES}."
    )
  if config.noise not in smoothing.NOISE_KINDS:
    raise ValueError(
        f"Unknown noise kind {config.noise!r}; expected one of "
        f"{smoothing.NOISE_KINDS}."
    )


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


def train_batches(config, shards: int, start_step: int):
  """This process's rows of every global batch from `start_step` on: the
  concatenated batches of its consecutive shards (numpy, uint8 images)."""
  per_process = shards // jax.process_count()
  first = jax.process_index() * per_process
  streams = [
      input_pipeline.train_dataset(
          config.dataset,
          batch_size=config.batch_size,
          seed=config.seed,
          data_dir=config.data_dir,
          start_step=start_step,
          shuffle_buffer=(
              config.shuffle_buffer if config.shuffle_buffer > 0 else None
          ),
          process_index=first + i,
          process_count=shards,
      )
      for i in range(per_process)
  ]
  if per_process == 1:
    yield from streams[0]
    return
  for parts in zip(*streams):
    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _noisy(config, spec, offsets, key, x):
  """Training noise of the config's kind for a batch of grid inputs x."""
  return smoothing.random_noise(config.noise, key, x, spec, offsets)


def make_train_step(model, config, spec, offsets):
  """The jitted-later step: (state, batch, key) -> (state, metrics)."""

  def train_step(state, batch, key):
    x = batch["image"].astype(jnp.float32) / config.q
    labels = batch["label"]
    key = jax.random.fold_in(key, state.step)
    if config.stability:
      key_1, key_2 = jax.random.split(key)
      # One forward over both draws: BatchNorm sees the pair as one batch.
      noisy = jnp.concatenate(
          [
              _noisy(config, spec, offsets, key_1, x),
              _noisy(config, spec, offsets, key_2, x),
          ]
      )
    else:
      noisy = _noisy(config, spec, offsets, key, x)

    def loss_fn(params):
      logits, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats},
          noisy,
          train=True,
          mutable=["batch_stats"],
      )
      if config.stability:
        logits_1, logits_2 = jnp.split(logits, 2)
        loss, _ = stability_loss(
            logits_1, logits_2, labels, config.stability_gamma
        )
      else:
        logits_1 = logits
        loss = optax.softmax_cross_entropy_with_integer_labels(
            logits, labels
        ).mean()
      return loss, (logits_1, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return state, {"loss": loss, "accuracy": accuracy}

  return train_step


def make_eval_step(model, config, spec, offsets):
  """(state, batch, key) -> masked counts of correct clean/noisy predictions."""

  def eval_step(state, batch, key):
    x = batch["image"].astype(jnp.float32) / config.q
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    mask = batch["mask"]
    noisy = _noisy(config, spec, offsets, key, x)
    both = model.apply(variables, jnp.concatenate([x, noisy]), train=False)
    clean, noisy_logits = jnp.split(both, 2)
    hit = lambda logits: jnp.sum(
        (jnp.argmax(logits, -1) == batch["label"]) & mask
    )
    return {
        "clean_correct": hit(clean),
        "noisy_correct": hit(noisy_logits),
        "count": jnp.sum(mask),
    }

  return eval_step


def global_batch(sharding, batch):
  """A process-local numpy batch as one global array split over devices."""
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, a), batch
  )


# Evaluation splits up to this size (uint8 images) are decoded once per
# training run and kept in host memory: decoding them every epoch costs more
# than evaluating them (Fashion-MNIST's test split: 7.8 MB).
EVAL_CACHE_BYTES = 256 * 2**20


def _eval_batches(config, cache: dict | None):
  """The evaluation batches of the config, kept in `cache` (one training
  run's dict) when they are small enough."""
  max_examples = config.eval_max_examples
  if cache is not None and "batches" in cache:
    return cache["batches"]
  batches = input_pipeline.eval_dataset(
      config.dataset,
      batch_size=config.eval_batch_size,
      max_examples=None if max_examples < 0 else max_examples,
      data_dir=config.data_dir,
  )
  info = input_pipeline.dataset_info(config.dataset)
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
  for i, batch in enumerate(_eval_batches(config, cache)):
    sums = eval_step(
        state, global_batch(sharding, batch), jax.random.fold_in(key, i), *args
    )
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    return {"count": 0}
  return {k: np.asarray(v).item() for k, v in jax.device_get(totals).items()}


def evaluate(
    eval_step, state, config, sharding, key, cache: dict | None = None
) -> dict[str, float]:
  """Clean and noisy accuracy of a classifier on the evaluation split
  (`eval_sums` of `make_eval_step`)."""
  totals = eval_sums(eval_step, state, config, sharding, key, cache=cache)
  count = max(totals["count"], 1)
  return {
      "eval_clean_accuracy": totals.get("clean_correct", 0) / count,
      "eval_noisy_accuracy": totals.get("noisy_correct", 0) / count,
      "eval_examples": totals["count"],
  }


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
class Run:
  """A training run set up to start or resume (`start_run`)."""

  state: Any  # The state to step from (restored when resuming).
  checkpointer: checkpoints.Checkpointer
  metadata: dict[str, Any]  # The checkpoints' record, with data_shards.
  shards: int  # Training-data shards (`data_shards`).
  start_step: int
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
) -> Run:
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
    The Run: state at its last checkpoint (or fresh), schedule, shardings
    and the training and evaluation keys (functions of config.seed).
  """
  make_workdir(workdir)
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  stored = (
      checkpointer.metadata()
      if checkpointer.latest_step() is not None
      else None
  )
  if stored is not None:
    checkpoints.check_matches(
        stored,
        metadata,
        resume_fields,
        what=f"The checkpoint in {workdir!r}",
        fix="Resume with the checkpoint's values, or use a new --workdir.",
    )
  shards = data_shards(config, stored, workdir)
  steps_per_epoch = (
      config.steps_per_epoch
      if config.steps_per_epoch > 0
      else input_pipeline.train_steps_per_epoch(
          config.dataset,
          batch_size=config.batch_size,
          data_dir=config.data_dir,
          process_count=shards,
      )
  )
  total_steps = config.num_epochs * steps_per_epoch
  mesh = certify.make_mesh()
  replicated = NamedSharding(mesh, P())
  state = jax.jit(lambda: init_state(total_steps), out_shardings=replicated)()
  if stored is not None:
    state = checkpointer.restore(state)
    logging.info("Resuming from step %d.", int(state.step))
  start_step = int(state.step)
  truncate_metrics(workdir, start_step)
  if distributed.is_primary():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  # Made on the global mesh: device_put cannot reach other processes' devices.
  train_key, eval_key = jax.jit(
      lambda: tuple(jax.random.split(jax.random.key(config.seed), 2)),
      out_shardings=replicated,
  )()
  return Run(
      state=state,
      checkpointer=checkpointer,
      metadata={**metadata, "data_shards": shards},
      shards=shards,
      start_step=start_step,
      total_steps=total_steps,
      steps_per_epoch=steps_per_epoch,
      replicated=replicated,
      batch_sharding=NamedSharding(mesh, P("data")),
      train_key=train_key,
      eval_key=eval_key,
  )


def training_noise(config):
  """(dataset info, smoothing spec, DSSN offsets (H, W, C)) of a config's
  training noise, for classifiers and denoisers alike."""
  info = input_pipeline.dataset_info(config.dataset)
  spec = smoothing.SmoothingSpec(config.sigma, config.q)
  offsets = smoothing.make_offsets(
      config.offsets_seed, info.input_shape, spec.levels, config.offsets_layout
  )
  return info, spec, offsets


def classifier_setup(config):
  """The config's classifier before training.

  Returns:
    (model, spec, offsets, metadata, init_state): the Flax model, the
    smoothing spec and the DSSN offsets (H, W, C) of the training noise,
    the checkpoints' record, and total_steps -> a fresh TrainState (SGD
    with the schedule over total_steps).
  """
  info, spec, offsets = training_noise(config)
  model = models.create_model(
      config.model,
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
      dtype=jnp.dtype(config.compute_dtype),
  )
  metadata = checkpoints.smoothing_metadata(
      config,
      input_shape=info.input_shape,
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
      offsets=offsets,
  )

  def init_state(total_steps: int) -> TrainState:
    return new_state(
        model, config, info.input_shape, create_optimizer(config, total_steps)
    )

  return model, spec, offsets, metadata, init_state


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


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains (or resumes) the config's classifier; checkpoints every epoch.

  Args:
    config: a config of configs/ (see configs/common.py for the fields).
    workdir: directory for checkpoints/, metrics.jsonl, TensorBoard events
      and config.json; an existing run there is resumed.

  Returns:
    The final training state.
  """
  _check_config(config)
  input_pipeline.hide_tf_from_accelerators()
  model, spec, offsets, metadata, init_state = classifier_setup(config)
  run = start_run(config, workdir, metadata, RESUME_FIELDS, init_state)
  shardings = (run.replicated, run.batch_sharding, run.replicated)
  train_step = jax.jit(
      make_train_step(model, config, spec, offsets),
      in_shardings=shardings,
      out_shardings=(run.replicated, run.replicated),
      donate_argnums=0,
  )
  eval_step = jax.jit(
      make_eval_step(model, config, spec, offsets), in_shardings=shardings
  )
  eval_cache = {}
  return run_steps(
      run,
      lambda state, batch: train_step(state, batch, run.train_key),
      config=config,
      workdir=workdir,
      desc=f"train {config.model} {config.noise}",
      evaluate_epoch=lambda state, done: evaluate(
          eval_step,
          state,
          config,
          run.batch_sharding,
          jax.random.fold_in(run.eval_key, done),
          eval_cache,
      ),
      epoch_message=lambda summary: (
          f"epoch {summary['epoch']}: train loss "
          f"{summary['train_loss']:.4f}, eval clean accuracy "
          f"{summary['eval_clean_accuracy']:.4f}, under noise "
          f"{summary['eval_noisy_accuracy']:.4f}"
      ),
  )


def run_steps(
    run: Run,
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
  data (`train_batches`): logs the mean training metrics and images/s every
  `config.log_every_steps` steps; at the end of every epoch evaluates
  (`evaluate_epoch(state, steps_done)`), writes metrics (with the epoch's
  seconds of stepping and of evaluation, `train_seconds` and
  `eval_seconds`) and saves a checkpoint. Dispatch runs at most one step
  ahead, so the progress bar counts finished steps and a log step never
  waits for a backlog.

  Args:
    run: the run set up by `start_run`.
    train_step: (state, global batch) -> (state, metrics), jitted.
    config: the run's config (batch_size, log_every_steps, data fields).
    workdir: where metrics go (metrics.jsonl, TensorBoard).
    desc: the progress bar's label.
    evaluate_epoch: evaluation metrics at the end of an epoch.
    epoch_message: the line printed after each epoch, from its metrics.

  Returns:
    The final state.
  """
  # Imported here, after the input pipeline: clu imports TensorFlow, which
  # dssn_jax.data.quiet_tensorflow imports with its C++ start-up lines silenced.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0
  )
  batches = (
      global_batch(run.batch_sharding, b)
      for b in train_batches(config, run.shards, run.start_step)
  )
  start_step, total_steps = run.start_step, run.total_steps
  steps_per_epoch, state = run.steps_per_epoch, run.state
  progress = tqdm.tqdm(
      total=total_steps,
      initial=start_step,
      unit="step",
      desc=desc,
      disable=jax.process_index() > 0,
  )
  window_start, window_images, train_metrics = time.perf_counter(), 0, []
  epoch_start = window_start  # Stepping time of the epoch, from here.
  previous = None  # The last step's metrics, still being computed.
  for step in range(start_step, total_steps):
    state, metrics = train_step(state, next(batches))
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
      summary = {
          f"train_{k}": float(np.mean([m[k] for m in train_metrics]))
          for k in train_metrics[0]
      }
      elapsed = time.perf_counter() - window_start
      summary["train_images_per_second"] = window_images / max(elapsed, 1e-9)
      progress.set_postfix(
          loss=f"{summary['train_loss']:.4f}",
          img_s=f"{summary['train_images_per_second']:.0f}",
      )
      if done % steps_per_epoch:
        write_metrics(workdir, writer, done, summary)
      window_start, window_images, train_metrics = time.perf_counter(), 0, []
    if done % steps_per_epoch == 0:
      eval_start = time.perf_counter()
      summary["train_seconds"] = eval_start - epoch_start
      summary.update(evaluate_epoch(state, done))
      summary["eval_seconds"] = time.perf_counter() - eval_start
      summary["epoch"] = done // steps_per_epoch
      write_metrics(workdir, writer, done, summary)
      if distributed.is_primary():
        tqdm.tqdm.write(epoch_message(summary))
      run.checkpointer.save(done, state, run.metadata)
      # Do not count evaluation or saving as stepping time.
      window_start = epoch_start = time.perf_counter()
  if previous is not None:
    jax.block_until_ready(previous)
    progress.update(1)
  progress.close()
  writer.flush()
  run.checkpointer.close()
  return state
