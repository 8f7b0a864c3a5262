"""Training a denoiser under splitting noise (denoised smoothing).

`train_denoiser(config, workdir)` trains the DnCNN of `config.denoiser` on
the config's dataset under the config's noise (`dssn` with the offsets of
`config.offsets_seed`, `ssn` or `uniform`), with one of two objectives
(Salman et al. 2020):

  mse:       mean over pixels of `(D(x~) - x)^2`, x the clean image;
  stability: `CE(f(D(x~)), argmax f(x))` through a frozen classifier f
             restored from `config.denoiser.classifier_workdir`; only the
             denoiser's parameters move.

The checkpoint carries the smoothing metadata of a classifier's checkpoint
(noise, sigma, q, offsets seed, layout and fingerprint) plus `kind:
denoiser`, the architecture, the objective and, for `stability`, the sha256
of the classifier's weights. Every random choice is a function of the seed
and the step, and the input pipeline skips to any step, so a run killed and
resumed from its last checkpoint ends with the same parameters as an
uninterrupted one. Adam with a cosine schedule, data parallel over all
devices like `dssn_jax.training.train`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dssn_jax.training import checkpoints
from dssn_jax.training import denoising
from dssn_jax.data import input_pipeline
from dssn_jax.core import methods
from dssn_jax import models
from dssn_jax.core import smoothing
from dssn_jax.training import train

# A denoiser learns to undo noise: every noise kind but "none".
TRAINING_NOISES = tuple(k for k in methods.NOISE_KINDS if k != "none")
# Fields a resumed run must share with its checkpoint.
RESUME_FIELDS = (
    checkpoints.SMOOTHING_FIELDS + ("dataset",) + denoising.DENOISER_FIELDS
)


def _check_config(config) -> None:
  train.check_training_config(config)
  cfg = config.denoiser
  if config.noise not in TRAINING_NOISES:
    raise ValueError(
        f"A denoiser is trained under noise; got noise="
        f"{config.noise!r}, expected one of {TRAINING_NOISES} "
        f"(--config.noise=dssn)."
    )
  if cfg.objective not in denoising.OBJECTIVES:
    raise ValueError(
        f"Unknown denoiser objective {cfg.objective!r}; "
        f"expected one of {denoising.OBJECTIVES}."
    )
  if cfg.objective == "stability" and not cfg.classifier_workdir:
    raise ValueError(
        "The stability objective trains through a frozen "
        "classifier: pass --config.denoiser.classifier_workdir="
        "<its training workdir>."
    )


def _frozen_classifier(config, info):
  """The stability objective's classifier f, or None for `mse`."""
  cfg = config.denoiser
  if cfg.objective != "stability":
    return None
  classifier = checkpoints.load_classifier(cfg.classifier_workdir)
  checkpoints.check_matches(
      classifier.metadata,
      {"dataset": config.dataset, "input_shape": list(info.input_shape)},
      ("dataset", "input_shape"),
      what=f"The classifier in {cfg.classifier_workdir!r}",
      fix="Train the denoiser on the classifier's dataset.",
  )
  return classifier


def denoiser_metadata(config, info, offsets, classifier) -> dict[str, Any]:
  """The checkpoint's JSON record: smoothing metadata plus the denoiser's."""
  cfg = config.denoiser
  metadata = checkpoints.smoothing_metadata(
      config,
      input_shape=info.input_shape,
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
      offsets=offsets,
  )
  metadata.update(
      kind="denoiser",
      model=cfg.model,
      denoiser=cfg.model,
      depth=int(cfg.depth),
      width=int(cfg.width),
      objective=cfg.objective,
      classifier_sha256=(
          denoising.variables_fingerprint(classifier.variables)
          if classifier is not None
          else ""
      ),
      classifier_workdir=(
          os.path.abspath(cfg.classifier_workdir)
          if classifier is not None
          else ""
      ),
  )
  return metadata


def make_train_step(model, config, spec, offsets, classifier_apply):
  """(state, batch, key, clf_variables) -> (state, metrics), jitted later."""
  stability = config.denoiser.objective == "stability"

  def train_step(state, batch, key, clf_variables):
    x = batch["image"].astype(jnp.float32) / config.q
    key = jax.random.fold_in(key, state.step)
    noisy = smoothing.random_noise(config.noise, key, x, spec, offsets)
    if stability:  # The frozen classifier's clean prediction is the target.
      target = jnp.argmax(classifier_apply(clf_variables, x), -1)

    def loss_fn(params):
      out, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats},
          noisy,
          train=True,
          mutable=["batch_stats"],
      )
      mse = jnp.mean((out - x) ** 2)
      if stability:
        logits = classifier_apply(clf_variables, out)
        loss = optax.softmax_cross_entropy_with_integer_labels(
            logits, target
        ).mean()
      else:
        loss = mse
      return loss, (mse, updates["batch_stats"])

    (loss, (mse, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "mse": mse}

  return train_step


def make_eval_step(model, config, spec, offsets, classifier_apply):
  """(state, batch, key, clf_variables) -> masked sums: squared error of the
  noisy input and of the denoised one (per image, pixel means), and, with a
  classifier, its correct predictions on denoised noisy inputs."""

  def eval_step(state, batch, key, clf_variables):
    x = batch["image"].astype(jnp.float32) / config.q
    mask = batch["mask"]
    noisy = smoothing.random_noise(config.noise, key, x, spec, offsets)
    out = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        noisy,
        train=False,
    )
    per_image = lambda y: jnp.mean((y - x) ** 2, axis=(1, 2, 3))
    sums = {
        "noisy_se": jnp.sum(per_image(noisy) * mask),
        "denoised_se": jnp.sum(per_image(out) * mask),
        "count": jnp.sum(mask),
    }
    if classifier_apply is not None:
      hit = jnp.argmax(classifier_apply(clf_variables, out), -1) == (
          batch["label"]
      )
      sums["classifier_correct"] = jnp.sum(hit & mask)
    return sums

  return eval_step


def evaluate(eval_step, state, config, sharding, key, clf_variables, cache):
  """Noisy and denoised MSE (and the classifier's accuracy on denoised noisy
  images) on (a prefix of) the evaluation split (`train.eval_sums`)."""
  totals = train.eval_sums(
      eval_step, state, config, sharding, key, clf_variables, cache=cache
  )
  count = max(totals["count"], 1)
  metrics = {
      "eval_noisy_mse": totals.get("noisy_se", 0.0) / count,
      "eval_denoised_mse": totals.get("denoised_se", 0.0) / count,
      "eval_examples": totals["count"],
  }
  if "classifier_correct" in totals:
    metrics["eval_classifier_accuracy"] = totals["classifier_correct"] / count
  return metrics


def train_denoiser(config, workdir: str) -> train.TrainState:
  """Trains (or resumes) the config's denoiser; checkpoints every epoch.

  Args:
    config: a config of configs/ (`noise`, `sigma`, `offsets_*`, the
      optimization fields and `config.denoiser`).
    workdir: directory for checkpoints/, metrics.jsonl, TensorBoard events
      and config.json; an existing run there is resumed.

  Returns:
    The final training state.
  """
  _check_config(config)
  input_pipeline.hide_tf_from_accelerators()
  cfg = config.denoiser
  info, spec, offsets = train.training_noise(config)
  model = models.create_denoiser(
      cfg.model,
      channels=info.input_shape[-1],
      depth=cfg.depth,
      width=cfg.width,
      dtype=jnp.dtype(config.compute_dtype),
  )
  classifier = _frozen_classifier(config, info)
  classifier_apply = classifier.apply_fn if classifier is not None else None
  metadata = denoiser_metadata(config, info, offsets, classifier)

  def init_state(total_steps):
    schedule = optax.cosine_decay_schedule(
        cfg.learning_rate, max(1, total_steps)
    )
    return train.new_state(
        model, config, info.input_shape, optax.adam(schedule)
    )

  run = train.start_run(config, workdir, metadata, RESUME_FIELDS, init_state)
  clf_variables = jax.device_put(
      classifier.variables if classifier is not None else {}, run.replicated
  )
  shardings = (run.replicated, run.batch_sharding) + (run.replicated,) * 2
  train_step = jax.jit(
      make_train_step(model, config, spec, offsets, classifier_apply),
      in_shardings=shardings,
      out_shardings=(run.replicated, run.replicated),
      donate_argnums=0,
  )
  eval_step = jax.jit(
      make_eval_step(model, config, spec, offsets, classifier_apply),
      in_shardings=shardings,
  )
  eval_cache = {}
  return train.run_steps(
      run,
      lambda state, batch: train_step(
          state, batch, run.train_key, clf_variables
      ),
      config=config,
      workdir=workdir,
      desc=f"train {cfg.model} {config.noise} {cfg.objective}",
      evaluate_epoch=lambda state, done: evaluate(
          eval_step,
          state,
          config,
          run.batch_sharding,
          jax.random.fold_in(run.eval_key, done),
          clf_variables,
          eval_cache,
      ),
      epoch_message=lambda summary: (
          f"epoch {summary['epoch']}: train loss {summary['train_loss']:.4f}, "
          f"eval MSE {summary['eval_denoised_mse']:.5f} (noisy input "
          f"{summary['eval_noisy_mse']:.5f})"
      ),
  )
