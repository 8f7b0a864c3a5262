"""Denoised smoothing: a trained denoiser in front of an unchanged classifier.

Salman et al. (2020) certify a classifier `f` that was not trained under
noise by putting a denoiser `D` trained under the smoothing noise in front of
it; the smoothed classifier is `argmax_c #{k : f(D(x~_k)) = c}`, and `f o D`
is just another base classifier, so the exact DSSN certificate (and the
randomized baselines) hold for it unchanged:

  apply_fn = lambda p, x: f(p["clf"], D(p["den"], x))

This module restores a denoiser trained by `dssn_jax.training.denoiser`,
checks that its smoothing agrees with the classifier's (a classifier trained
without noise has none to agree with), and composes the two into one
`checkpoints.Classifier` whose smoothing is the denoiser's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import hashlib
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dssn_jax import models
from dssn_jax.core import smoothing
from dssn_jax.data import datasets
from dssn_jax.training import checkpoints

OBJECTIVES = ("mse", "stability")
# Fields of a denoiser checkpoint's metadata beyond the smoothing metadata.
DENOISER_FIELDS = (
    "denoiser",
    "depth",
    "width",
    "objective",
    "classifier_sha256",
)


def variables_fingerprint(variables) -> str:
  """sha256 of a model's variables (names, dtypes, shapes and values).

  Identifies a checkpoint's weights whatever its workdir or step: the same
  weights give the same fingerprint, other weights (almost surely) another.
  """
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  for path, leaf in sorted(
      leaves, key=lambda item: jax.tree_util.keystr(item[0])
  ):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def build_denoiser(
    metadata: Mapping[str, Any], compute_dtype: str | None = None
):
  """The Flax denoiser a denoiser checkpoint's metadata describes."""
  dtype = compute_dtype or metadata.get("compute_dtype", "float32")
  return models.create_denoiser(
      metadata["denoiser"],
      channels=metadata["input_shape"][-1],
      depth=metadata["depth"],
      width=metadata["width"],
      dtype=jnp.dtype(dtype),
  )


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """A restored denoiser with the smoothing it was trained under.

  `apply_fn(variables, x)` maps (n, H, W, C) noisy inputs to denoised
  (n, H, W, C) images in [0, 1] pixel units, in eval mode.
  """

  apply_fn: Callable[[Any, jax.Array], jax.Array]
  variables: Any
  spec: smoothing.SmoothingSpec
  offsets: jax.Array
  metadata: dict[str, Any]
  step: int
  sha256: str


def load_denoiser(
    workdir: str, *, step: int | None = None, compute_dtype: str | None = None
) -> Denoiser:
  """Restores the latest (or given) checkpoint of a denoiser workdir.

  Args:
    workdir: the denoiser training run's workdir (holding `checkpoints/`).
    step: checkpoint step; default the latest.
    compute_dtype: override of the stored compute dtype.

  Returns:
    A Denoiser whose offsets are verified against the stored fingerprint.

  Raises:
    ValueError: the checkpoint is not a denoiser's (e.g. a classifier's).
    FileNotFoundError: no checkpoint in workdir.
  """
  checkpointer = checkpoints.Checkpointer(workdir, create=False)
  step = checkpointer._step(step)  # pylint: disable=protected-access
  metadata = checkpointer.metadata(step)
  if metadata.get("kind") != "denoiser":
    checkpointer.close()
    raise ValueError(
        f"The checkpoint in {workdir!r} is not a denoiser's (it holds a "
        f"{metadata.get('model')!r} classifier). Pass a workdir of "
        f"`python -m experiments.train_denoiser` as the denoiser."
    )
  state = checkpointer.restore(step=step)
  checkpointer.close()
  variables = {
      "params": state["params"],
      "batch_stats": state.get("batch_stats") or {},
  }
  model = build_denoiser(metadata, compute_dtype)
  apply_fn = lambda variables, x: model.apply(variables, x, train=False)
  spec = smoothing.SmoothingSpec(metadata["sigma"], metadata["q"])
  return Denoiser(
      apply_fn,
      variables,
      spec,
      checkpoints.offsets_from_metadata(metadata),
      metadata,
      step,
      variables_fingerprint(variables),
  )


def compose(
    classifier: checkpoints.Classifier, denoiser: Denoiser
) -> checkpoints.Classifier:
  """`f o D` as one base classifier, with the denoiser's smoothing.

  Args:
    classifier: the restored classifier f.
    denoiser: the restored denoiser D, trained on f's dataset and input shape.

  Returns:
    A Classifier with `apply_fn(p, x) = f(p["clf"], D(p["den"], x))`,
    `variables = {"clf": ..., "den": ...}`, the denoiser's spec and offsets,
    and the classifier's metadata with the denoiser's smoothing fields and a
    `denoised` record (both checkpoints' steps and fingerprints).

  Raises:
    ValueError: the two were trained on other data or input shapes, or the
      classifier was trained under noise whose smoothing differs from the
      denoiser's.
  """
  clf_meta, den_meta = classifier.metadata, denoiser.metadata
  checkpoints.check_matches(
      den_meta,
      clf_meta,
      ("dataset", "input_shape"),
      what="The denoiser's data (checkpoint) and the classifier's (config)",
      fix="Use a denoiser trained on the classifier's dataset.",
  )
  if clf_meta.get("noise", "none") != "none":
    # A classifier trained under noise has a smoothing of its own; in front
    # of it, a denoiser must have been trained under the same one.
    checkpoints.check_matches(
        den_meta,
        clf_meta,
        checkpoints.SMOOTHING_FIELDS,
        what="The denoiser's smoothing (checkpoint) and the classifier's "
        "(config)",
        fix="Use a denoiser trained under the classifier's noise, sigma and "
        "offsets, or a classifier trained without noise.",
    )
  clf_sha256 = variables_fingerprint(classifier.variables)
  trained_for = den_meta.get("classifier_sha256") or None
  if trained_for is not None and trained_for != clf_sha256:
    logging.warning(
        "The denoiser was trained (stability objective) against classifier "
        "%s, not this one (%s); the certificate holds for this pair, but the "
        "denoiser was not tuned for it.",
        trained_for[:12],
        clf_sha256[:12],
    )
  metadata = dict(clf_meta)
  for field in (
      "noise",
      "sigma",
      "q",
      "levels",
      "offsets_seed",
      "offsets_layout",
      "offsets_sha256",
  ):
    metadata[field] = den_meta[field]
  metadata["denoised"] = {
      "classifier_step": classifier.step,
      "classifier_sha256": clf_sha256,
      "classifier_noise": clf_meta.get("noise", "none"),
      "denoiser": den_meta["denoiser"],
      "denoiser_depth": den_meta["depth"],
      "denoiser_width": den_meta["width"],
      "denoiser_objective": den_meta["objective"],
      "denoiser_noise": den_meta["noise"],
      "denoiser_step": denoiser.step,
      "denoiser_sha256": denoiser.sha256,
      # None: an mse denoiser, trained for no classifier in particular.
      "denoiser_trained_for_this_classifier": (
          None if trained_for is None else trained_for == clf_sha256
      ),
  }
  return checkpoints.Classifier(
      composed_apply(classifier.apply_fn, denoiser.apply_fn),
      {"clf": classifier.variables, "den": denoiser.variables},
      denoiser.spec,
      denoiser.offsets,
      metadata,
      classifier.step,
  )


def composed_apply(classifier_apply, denoiser_apply):
  """`f o D` as an apply_fn: (variables {"clf": ..., "den": ...}, x) ->
  f(variables["clf"], D(variables["den"], x)); `compose` certifies with it
  and `dssn_jax.runs.aot` compiles it."""
  return lambda p, x: classifier_apply(p["clf"], denoiser_apply(p["den"], x))


def _flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def forward_flops(groups, dataset: str = "fashion_mnist") -> dict[str, float]:
  """XLA's FLOPs of one forward of each row's base classifier.

  Args:
    groups: row label -> runs (`certified_runs.CertifiedRun`) of the small
      CNN, alone or behind the denoiser their `denoised` metadata names.
    dataset: the runs' dataset (input shape and normalization).

  Returns:
    Row label -> FLOPs of one image (rows without runs are left out).
  """
  info = datasets.dataset_info(dataset)
  x = jnp.zeros((1,) + tuple(info.input_shape))
  clf = models.create_model(
      "small_cnn", num_classes=info.num_classes, mean=info.mean, std=info.std
  )
  clf_flops = _flops(
      lambda v, x: clf.apply(v, x), clf.init(jax.random.key(0), x), x
  )
  flops = {}
  for label, runs in groups.items():
    if not runs:
      continue
    denoised = runs[0].metadata.get("denoised")
    if denoised is None:
      flops[label] = clf_flops
      continue
    den = models.create_denoiser(
        denoised["denoiser"],
        channels=x.shape[-1],
        depth=denoised["denoiser_depth"],
        width=denoised["denoiser_width"],
    )
    flops[label] = clf_flops + _flops(
        den.apply, den.init(jax.random.key(0), x), x
    )
  return flops


def run_metadata(classifier: checkpoints.Classifier) -> dict[str, Any]:
  """What a certification run records of a composed classifier: both
  checkpoints (a resume with another denoiser or classifier is refused);
  nothing for a plain classifier, so its results files stay as they were."""
  denoised = classifier.metadata.get("denoised")
  return {} if denoised is None else {"denoised": dict(denoised)}
