"""Orbax checkpoints that carry the smoothing of the classifier they hold.

A checkpoint step directory holds two items: `state` (the training state, or
just `{"params", "batch_stats"}` for converted models) and `smoothing`, a JSON
record of everything needed to certify the classifier exactly as trained:
noise kind, sigma, q, levels, the offsets' seed, layout and sha256
fingerprint, and the model (name, classes, input shape, normalization).

Restoring regenerates the offsets from their seed and refuses a fingerprint
that differs: certificates with other offsets stay valid, but the classifier
silently loses accuracy, so it is an error rather than a surprise.

A third item, `checksums`, holds the sha256 of every saved array (its dtype,
shape and bytes): Orbax checks its shard indices but not the data, so bytes
flipped in a data file would otherwise restore as other parameters. Restoring
verifies every array against it and refuses non-finite parameters, with one
line naming the step directory to delete; checkpoints saved before checksums
existed are restored with the finite check alone (and a warning). Saving
refuses non-finite parameters (a diverged run) instead of keeping them.

A training checkpoint also holds `data`: the state of the input pipeline's
iterator of every training-data shard (`batches.ShardBatches`), one JSON
file per shard, each written by the process that reads the shard, so that a
resumed run, on any number of processes that divides the shards, reads
exactly the batches an uninterrupted run would have read next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import hashlib
import json
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dssn_jax import models
from dssn_jax.core import smoothing
from dssn_jax.data import datasets

CHECKPOINT_DIR = "checkpoints"
# The fields that define the smoothed classifier; certification and resumed
# training must agree with the checkpoint on each of them.
SMOOTHING_FIELDS = ("noise", "sigma", "q", "offsets_seed", "offsets_layout")
MODEL_FIELDS = ("model", "dataset")


def smoothing_metadata(
    config, *, offsets=None, num_classes=None, mean=None, std=None
) -> dict[str, Any]:
  """The JSON record stored with each checkpoint of a run of `config`.

  The input shape is the dataset's (`datasets.dataset_info(config.dataset)`);
  so are the class count and the input normalization unless given, as
  `models.create_model` gets them in training (a converted model passes its
  own).

  Args:
    config: the run's config (fields of configs/common.py).
    offsets: the offsets used in training; default: regenerated from config.
    num_classes: number of logits; default the dataset's.
    mean, std: the model's per-channel input normalization, [0, 1] pixel
      units; default the dataset's.

  Returns:
    A JSON-serializable dict.
  """
  info = datasets.dataset_info(config.dataset)
  input_shape = info.input_shape
  num_classes = info.num_classes if num_classes is None else num_classes
  mean = info.mean if mean is None else mean
  std = info.std if std is None else std
  spec = smoothing.SmoothingSpec(config.sigma, config.q)
  if offsets is None:
    offsets = smoothing.make_offsets(
        config.offsets_seed, input_shape, spec.levels, config.offsets_layout
    )
  return {
      "noise": config.noise,
      "sigma": float(config.sigma),
      "q": int(config.q),
      "levels": spec.levels,
      "offsets_seed": int(config.offsets_seed),
      "offsets_layout": config.offsets_layout,
      "offsets_sha256": smoothing.offsets_fingerprint(offsets),
      "stability": bool(config.get("stability", False)),
      "stability_gamma": float(config.get("stability_gamma", 0.0)),
      "model": config.model,
      "dataset": config.dataset,
      "input_shape": [int(n) for n in input_shape],
      "num_classes": int(num_classes),
      "mean": [float(m) for m in mean],
      "std": [float(s) for s in std],
      "compute_dtype": config.get("compute_dtype", "float32"),
      "jax_version": jax.__version__,
  }


def check_matches(
    stored: Mapping[str, Any],
    wanted: Mapping[str, Any],
    fields,
    *,
    what: str,
    fix: str,
) -> None:
  """Raises ValueError naming every field where stored and wanted differ."""
  diffs = [
      f"{name}: checkpoint has {stored.get(name)!r}, config has "
      f"{wanted.get(name)!r}"
      for name in fields
      if _differs(stored.get(name), wanted.get(name))
  ]
  if diffs:
    raise ValueError(
        f"{what} disagrees with the config (" + "; ".join(diffs) + f"). {fix}"
    )


def _differs(a, b) -> bool:
  if isinstance(a, float) or isinstance(b, float):
    try:
      return abs(float(a) - float(b)) > 1e-12 * max(1.0, abs(float(a)))
    except (TypeError, ValueError):
      return True
  return a != b


def offsets_from_metadata(metadata: Mapping[str, Any]) -> jax.Array:
  """Regenerates a checkpoint's offsets and checks their fingerprint."""
  offsets = smoothing.make_offsets(
      metadata["offsets_seed"],
      metadata["input_shape"],
      metadata["levels"],
      metadata["offsets_layout"],
  )
  fingerprint = smoothing.offsets_fingerprint(offsets)
  if fingerprint != metadata["offsets_sha256"]:
    raise ValueError(
        f"The offsets regenerated from seed {metadata['offsets_seed']} "
        f"(layout {metadata['offsets_layout']!r}) have sha256 {fingerprint}, "
        f"but the classifier was trained with offsets of sha256 "
        f"{metadata['offsets_sha256']} (JAX {metadata.get('jax_version')}; "
        f"this is JAX {jax.__version__}, and random streams can change "
        f"between versions). Certify with the JAX version it was trained "
        f"with, or retrain; certificates with other offsets would be valid "
        f"but the classifier would lose accuracy."
    )
  return offsets


CHECKSUMS_ITEM = "checksums"
DATA_ITEM = "data"


def _shard_file(directory: epath.Path, shard: int) -> epath.Path:
  return directory / f"shard_{shard}.json"


class ShardStatesHandler(ocp.CheckpointHandler):
  """Orbax handler of the `data` item: {shard: iterator state (JSON-able)}.

  Every process saves the states of its own shards; a process restores the
  states of the shards it reads now, whichever process saved them.
  """

  def save(self, directory: epath.Path, args: ShardStatesSave):
    for shard, state in args.states.items():
      _shard_file(directory, shard).write_text(json.dumps(state))

  def restore(self, directory: epath.Path, args: ShardStatesRestore):
    return {
        shard: json.loads(_shard_file(directory, shard).read_text())
        for shard in args.shards
    }

  def metadata(self, directory: epath.Path):
    del directory
    return None

  def finalize(self, directory: epath.Path):
    del directory

  def close(self):
    pass


@ocp.args.register_with_handler(ShardStatesHandler, for_save=True)
@dataclasses.dataclass
class ShardStatesSave(ocp.args.CheckpointArgs):
  states: dict[int, Any]


@ocp.args.register_with_handler(ShardStatesHandler, for_restore=True)
@dataclasses.dataclass
class ShardStatesRestore(ocp.args.CheckpointArgs):
  shards: list[int]


def _leaf_name(path) -> str:
  """A leaf's path as 'params/Conv_0/kernel', the same for a dataclass
  (TrainState) and for the dict Orbax restores without a target."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _host_leaves(state) -> dict[str, np.ndarray]:
  """Every array of state on the host, by `_leaf_name` (arrays this
  process cannot read whole are left out)."""
  leaves = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(leaf, jax.Array) and not (
        leaf.is_fully_addressable or leaf.is_fully_replicated
    ):
      continue
    leaves[_leaf_name(path)] = np.asarray(leaf)
  return leaves


def array_checksums(state) -> dict[str, str]:
  """sha256 of each array of state (dtype, shape and bytes), by leaf."""
  out = {}
  for name, array in _host_leaves(state).items():
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    out[name] = digest.hexdigest()
  return out


def non_finite_leaves(state) -> list[str]:
  """The floating-point arrays of state with a NaN or an infinity."""
  return [
      name
      for name, array in _host_leaves(state).items()
      if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all()
  ]


class Checkpointer:
  """Saves and restores checkpoints in `workdir/checkpoints`, with the
  checksums of their arrays."""

  def __init__(self, workdir: str, *, keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(
          f"No checkpoint in {workdir!r} (looked for {self.directory}). "
          f"Train first: python -m experiments.train --config=... "
          f"--workdir={workdir}"
      )
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> str:
    """The directory of checkpoint step `step`."""
    return os.path.join(self.directory, str(step))

  def save(
      self,
      step: int,
      state,
      metadata: Mapping[str, Any],
      data_state: dict[int, Any] | None = None,
  ) -> None:
    """Saves state with its smoothing record and checksums, and the input
    iterators' states of this process's shards (`data_state`, {shard:
    JSON-able state}) when given; non-finite parameters are refused
    (nothing saved)."""
    bad = non_finite_leaves(state)
    if bad:
      raise ValueError(
          f"Not saving checkpoint step {step}: the training state has "
          f"non-finite values ({', '.join(bad[:3])}"
          f"{', ...' if len(bad) > 3 else ''}); training diverged. Lower the "
          f"learning rate, or resume from the last checkpoint."
      )
    items = {
        "state": ocp.args.StandardSave(state),
        "smoothing": ocp.args.JsonSave(dict(metadata)),
        CHECKSUMS_ITEM: ocp.args.JsonSave(array_checksums(state)),
    }
    if data_state is not None:
      items[DATA_ITEM] = ShardStatesSave(dict(data_state))
    self._manager.save(step, args=ocp.args.Composite(**items))
    self._manager.wait_until_finished()

  def metadata(self, step: int | None = None) -> dict[str, Any]:
    step = self._step(step)
    try:
      return dict(
          self._manager.restore(
              step, args=ocp.args.Composite(smoothing=ocp.args.JsonRestore())
          ).smoothing
      )
    except Exception as e:  # Orbax raises several types for damaged files.
      raise self._damaged(step, "is unreadable or corrupt", e) from e

  def restore(self, target=None, step: int | None = None):
    """Restores `state` into the structure and shardings of target
    (default: the saved structure on this process's first device)."""
    step = self._step(step)
    if target is None:
      target = self._local_target(step)
    args = ocp.args.StandardRestore(target)
    try:
      state = self._manager.restore(
          step, args=ocp.args.Composite(state=args)
      ).state
    except Exception as e:  # Orbax raises several types for damaged files.
      raise self._damaged(step, "could not be restored", e) from e
    self._verify(step, state)
    return state

  def _damaged(self, step: int, what: str, cause: Exception) -> ValueError:
    """The error for a step Orbax cannot read: the step to delete first (the
    command line shows the first line only), then the cause's first line."""
    lines = str(cause).strip().splitlines()
    return ValueError(
        f"Checkpoint step {step} in {self.directory} {what}. Delete "
        f"{self.step_dir(step)} to fall back to an earlier step, or retrain "
        f"({type(cause).__name__}: {lines[0][:300] if lines else ''})."
    )

  def _verify(self, step: int, state) -> None:
    """Refuses a restored state that differs from the checksums saved with
    it, or that holds non-finite values."""
    fix = (
        f"Delete {self.step_dir(step)} to fall back to an earlier step, or "
        "retrain."
    )
    stored = self._checksums(step)
    if stored is None:
      logging.warning(
          "Checkpoint step %s in %s has no checksums (saved by an earlier "
          "dssn-jax): only checked for non-finite values.",
          step,
          self.directory,
      )
    else:
      restored = array_checksums(state)
      # Arrays another process held when saving are not checked here.
      bad = sorted(
          name
          for name in restored
          if name in stored and restored[name] != stored[name]
      )
      if stored and not set(stored) & set(restored):
        bad = sorted(stored)  # Another tree than the checksums describe.
      if bad:
        raise ValueError(
            f"Checkpoint step {step} is corrupt: {len(bad)} of its arrays "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) differ "
            f"from the checksums saved with them. {fix}"
        )
    bad = non_finite_leaves(state)
    if bad:
      raise ValueError(
          f"Checkpoint step {step} holds non-finite values "
          f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}). {fix}"
      )

  def data_state(
      self, shards: list[int], step: int | None = None
  ) -> dict[int, Any] | None:
    """The saved input iterators' states of `shards` ({shard: state}); None
    for a checkpoint saved without them (a converted model)."""
    step = self._step(step)
    return self._optional_item(
        step,
        DATA_ITEM,
        ShardStatesRestore(list(shards)),
        "has an unreadable input pipeline state",
    )

  def _checksums(self, step: int) -> dict[str, str] | None:
    """The checksums saved with a step (None: saved without them)."""
    checksums = self._optional_item(
        step, CHECKSUMS_ITEM, ocp.args.JsonRestore(), "has unreadable checksums"
    )
    return None if checksums is None else dict(checksums)

  def _optional_item(self, step: int, item: str, args, what: str):
    """Restores `item` of a step with `args` (None: saved without it);
    a damaged one is the one-line error naming the step to delete."""
    if not os.path.isdir(os.path.join(self.step_dir(step), item)):
      return None
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{item: args})
      )
    except Exception as e:  # Orbax raises several types for damaged files.
      raise self._damaged(step, what, e) from e
    return getattr(restored, item)

  def _local_target(self, step: int):
    """The saved state's shapes and dtypes on this process's first device.

    Orbax would otherwise restore onto the devices it was saved from, which
    fails on another topology and, in a multi-process run, spans the other
    processes' devices, which a process-local computation cannot use.
    """
    path = epath.Path(self.directory) / str(step) / "state"
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
      tree = ocp.StandardCheckpointHandler().metadata(path).tree
    except Exception as e:  # Orbax raises several types for damaged files.
      raise self._damaged(step, "is unreadable or corrupt", e) from e
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree
    )

  def _step(self, step):
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f"No checkpoint steps in {self.directory}: train first."
      )
    return step

  def close(self):
    self._manager.close()


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A restored base classifier with its smoothing.

  `apply_fn(variables, batch)` maps (n, H, W, C) inputs in [0, 1] to float32
  logits in eval mode; pass `variables` as `params=` to `dssn_counts`.
  """

  apply_fn: Callable[[Any, jax.Array], jax.Array]
  variables: Any
  spec: smoothing.SmoothingSpec
  offsets: jax.Array
  metadata: dict[str, Any]
  step: int


def build_model(metadata: Mapping[str, Any], compute_dtype: str | None = None):
  """The Flax model a checkpoint's metadata describes."""
  dtype = compute_dtype or metadata.get("compute_dtype", "float32")
  return models.create_model(
      metadata["model"],
      num_classes=metadata["num_classes"],
      mean=tuple(metadata["mean"]),
      std=tuple(metadata["std"]),
      dtype=jnp.dtype(dtype),
  )


def _check_model_fits(apply_fn, variables, metadata, workdir, step) -> None:
  """Raises ValueError when the stored parameters do not fit the model that
  the stored metadata describes (an edited num_classes, model or shape)."""
  batch = jax.ShapeDtypeStruct((1, *metadata["input_shape"]), jnp.float32)
  try:
    logits = jax.eval_shape(apply_fn, variables, batch)
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
    reason = reason.split(" (https://")[0].rstrip(".")[:300]  # No doc link.
    raise ValueError(
        f"The checkpoint at step {step} in {workdir!r} does not fit the "
        f"model its metadata describes ({metadata['model']}, "
        f"{metadata['num_classes']} classes, input {metadata['input_shape']}"
        f"): {type(e).__name__}: {reason}. Its metadata was edited or "
        "comes from another checkpoint; restore the original or retrain."
    ) from None
  if logits.shape[-1] != metadata["num_classes"]:
    raise ValueError(
        f"The checkpoint at step {step} in {workdir!r} gives "
        f"{logits.shape[-1]} logits, but its metadata says "
        f"{metadata['num_classes']} classes; restore the original or retrain."
    )


def load_classifier(
    workdir: str, *, step: int | None = None, compute_dtype: str | None = None
) -> Classifier:
  """Restores the latest (or given) checkpoint of workdir for certification.

  Args:
    workdir: the training run's workdir (holding `checkpoints/`).
    step: checkpoint step; default the latest.
    compute_dtype: override of the stored compute dtype (e.g. "bfloat16").

  Returns:
    A Classifier whose offsets are verified against the stored fingerprint.
  """
  checkpointer = Checkpointer(workdir, create=False)
  step = checkpointer._step(step)  # pylint: disable=protected-access
  metadata = checkpointer.metadata(step)
  state = checkpointer.restore(step=step)
  checkpointer.close()
  variables = {"params": state["params"]}
  if state.get("batch_stats") is not None:
    variables["batch_stats"] = state["batch_stats"]
  model = build_model(metadata, compute_dtype)
  apply_fn = lambda variables, batch: model.apply(variables, batch, train=False)
  _check_model_fits(apply_fn, variables, metadata, workdir, step)
  spec = smoothing.SmoothingSpec(metadata["sigma"], metadata["q"])
  if spec.levels != metadata["levels"]:
    raise ValueError(
        f"The checkpoint stores L={metadata['levels']} levels but sigma="
        f"{spec.sigma}, q={spec.q} give L={spec.levels}: its metadata is "
        f"inconsistent or from another version of dssn-jax; retrain."
    )
  return Classifier(
      apply_fn, variables, spec, offsets_from_metadata(metadata), metadata, step
  )
