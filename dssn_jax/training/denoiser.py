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
of the classifier's weights. Adam with a cosine schedule. The run itself
(resume, data shards, the loop, metrics, checkpoints) is the skeleton of
`loop`, shared with the classifiers, so a run killed and resumed from its
last checkpoint ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dssn_jax import models
from dssn_jax.core import methods
from dssn_jax.core import smoothing
from dssn_jax.training import checkpoints
from dssn_jax.training import denoising
from dssn_jax.training import loop

# A denoiser learns to undo noise: every noise kind but "none".
TRAINING_NOISES = tuple(k for k in methods.NOISE_KINDS if k != "none")
# Fields a resumed run must share with its checkpoint.
RESUME_FIELDS = (
    checkpoints.SMOOTHING_FIELDS + ("dataset",) + denoising.DENOISER_FIELDS
)


def check_config(config) -> None:
  """Checks a denoiser's training config (ValueError naming the fix)."""
  loop.check_training_config(config)
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


def denoiser_metadata(config, offsets, classifier) -> dict[str, Any]:
  """The checkpoint's JSON record: smoothing metadata plus the denoiser's.

  Args:
    config: the run's config.
    offsets: the DSSN offsets (H, W, C) of the training noise.
    classifier: the stability objective's frozen classifier, or None.
  """
  cfg = config.denoiser
  metadata = checkpoints.smoothing_metadata(config, offsets=offsets)
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


def eval_metrics(totals) -> dict[str, float]:
  """Noisy and denoised MSE (and the classifier's accuracy on denoised noisy
  images) on the evaluation split, from the sums of `make_eval_step` over
  it (`batches.eval_sums`)."""
  count = max(totals["count"], 1)
  metrics = {
      "eval_noisy_mse": totals.get("noisy_se", 0.0) / count,
      "eval_denoised_mse": totals.get("denoised_se", 0.0) / count,
      "eval_examples": totals["count"],
  }
  if "classifier_correct" in totals:
    metrics["eval_classifier_accuracy"] = totals["classifier_correct"] / count
  return metrics


def _epoch_message(summary) -> str:
  return (
      f"epoch {summary['epoch']}: train loss {summary['train_loss']:.4f}, "
      f"eval MSE {summary['eval_denoised_mse']:.5f} (noisy input "
      f"{summary['eval_noisy_mse']:.5f})"
  )


def trainer(config) -> loop.Trainer:
  """The denoiser's part of a training run of `config`: its DnCNN, the
  frozen classifier of the stability objective (restored here), the
  checkpoints' record, Adam over the run's steps, and the steps under the
  config's training noise."""
  cfg = config.denoiser
  info, spec, offsets = loop.training_noise(config)
  model = models.create_denoiser(
      cfg.model,
      channels=info.input_shape[-1],
      depth=cfg.depth,
      width=cfg.width,
      dtype=jnp.dtype(config.compute_dtype),
  )
  classifier = _frozen_classifier(config, info)
  classifier_apply = classifier.apply_fn if classifier is not None else None

  def init_state(total_steps: int) -> loop.TrainState:
    schedule = optax.cosine_decay_schedule(
        cfg.learning_rate, max(1, total_steps)
    )
    return loop.new_state(model, config, info.input_shape, optax.adam(schedule))

  return loop.Trainer(
      metadata=denoiser_metadata(config, offsets, classifier),
      resume_fields=RESUME_FIELDS,
      init_state=init_state,
      train_step=make_train_step(
          model, config, spec, offsets, classifier_apply
      ),
      eval_step=make_eval_step(model, config, spec, offsets, classifier_apply),
      eval_metrics=eval_metrics,
      epoch_message=_epoch_message,
      description=f"train {cfg.model} {config.noise} {cfg.objective}",
      inputs=(classifier.variables if classifier is not None else {},),
  )


def train_denoiser(config, workdir: str) -> loop.TrainState:
  """Trains (or resumes) the config's denoiser; checkpoints every epoch.

  Args:
    config: a config of configs/ (`noise`, `sigma`, `offsets_*`, the
      optimization fields and `config.denoiser`).
    workdir: directory for checkpoints/, metrics.jsonl, TensorBoard events
      and config.json; an existing run there is resumed.

  Returns:
    The final training state.
  """
  check_config(config)
  return loop.train(config, workdir, trainer(config))
