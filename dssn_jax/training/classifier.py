"""Training base classifiers under splitting noise.

`train_and_evaluate(config, workdir)` trains the config's model on its dataset
under the config's noise (docs/design.md, section 2): `dssn` draws one k per
example with the classifier's own offsets, `ssn` independent splits, `uniform`
additive noise, `none` clean inputs; with `stability`, the loss is
`CE(f(xt1), y) + gamma * KL(p(xt1) || p(xt2))` over two independent draws.
SGD with (Nesterov) momentum, coupled weight decay and a cosine schedule.

This module holds what is a classifier's own (its config check, loss, steps
and evaluation metrics); starting or resuming the run, the data shards, the
loop, metrics and checkpoints are the shared skeleton of `loop`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dssn_jax import models
from dssn_jax.core import smoothing
from dssn_jax.training import checkpoints
from dssn_jax.training import loop

# Fields a resumed run must share with its checkpoint.
RESUME_FIELDS = (
    checkpoints.SMOOTHING_FIELDS
    + checkpoints.MODEL_FIELDS
    + ("stability", "stability_gamma")
)


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


def check_config(config) -> None:
  """Checks a classifier's training config (ValueError naming the fix)."""
  loop.check_training_config(config)
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


def eval_metrics(totals) -> dict[str, float]:
  """Clean and noisy accuracy on the evaluation split, from the sums of
  `make_eval_step` over it (`batches.eval_sums`)."""
  count = max(totals["count"], 1)
  return {
      "eval_clean_accuracy": totals.get("clean_correct", 0) / count,
      "eval_noisy_accuracy": totals.get("noisy_correct", 0) / count,
      "eval_examples": totals["count"],
  }


def _epoch_message(summary) -> str:
  return (
      f"epoch {summary['epoch']}: train loss "
      f"{summary['train_loss']:.4f}, eval clean accuracy "
      f"{summary['eval_clean_accuracy']:.4f}, under noise "
      f"{summary['eval_noisy_accuracy']:.4f}"
  )


def trainer(config) -> loop.Trainer:
  """The classifier's part of a training run of `config`: its Flax model
  (`models.create_model`), the checkpoints' record, SGD over the run's
  steps, and the steps under the config's training noise."""
  info, spec, offsets = loop.training_noise(config)
  model = models.create_model(
      config.model,
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
      dtype=jnp.dtype(config.compute_dtype),
  )

  def init_state(total_steps: int) -> loop.TrainState:
    return loop.new_state(
        model, config, info.input_shape, create_optimizer(config, total_steps)
    )

  return loop.Trainer(
      metadata=checkpoints.smoothing_metadata(config, offsets=offsets),
      resume_fields=RESUME_FIELDS,
      init_state=init_state,
      train_step=make_train_step(model, config, spec, offsets),
      eval_step=make_eval_step(model, config, spec, offsets),
      eval_metrics=eval_metrics,
      epoch_message=_epoch_message,
      description=f"train {config.model} {config.noise}",
  )


def train_and_evaluate(config, workdir: str) -> loop.TrainState:
  """Trains (or resumes) the config's classifier; checkpoints every epoch.

  Args:
    config: a config of configs/ (see configs/common.py for the fields).
    workdir: directory for checkpoints/, metrics.jsonl, TensorBoard events
      and config.json; an existing run there is resumed.

  Returns:
    The final training state.
  """
  check_config(config)
  return loop.train(config, workdir, trainer(config))
