"""What a certification run records in its results metadata.

- `run_metadata`: what identifies the run (method, subset, smoothing,
  offsets fingerprint, checkpoint, dtype, ...). A results file is only
  appended to by a run with the same (results_metadata.check_metadata).
- `batching_record` / `record_batching`: batch, chunk and forward-pass sizes.
  They change no row, so a resume under other values is only logged.
- `check_computation`: backend, versions, XLA flags. They may change low bits
  of the logits, so a resume under another computation is refused unless
  allowed.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax

from dssn_jax.core import chunking
from dssn_jax.core import methods
from dssn_jax.core import sequential
from dssn_jax.core import smoothing
from dssn_jax.runs import decide_batch
from dssn_jax.runs import results_metadata
from dssn_jax.training import checkpoints
from dssn_jax.training import denoising


def run_metadata(
    config,
    classifier: checkpoints.Classifier,
    spec: smoothing.SmoothingSpec,
    offsets,
) -> dict[str, Any]:
  """What identifies a certification run (batching and chunking excluded:
  they do not change any row), with the denoiser's checkpoint when the
  classifier is certified behind one."""
  cfg = config.certify
  meta = {
      "method": cfg.method,
      "dataset": config.dataset,
      "split": cfg.split,
      "start": cfg.start,
      "skip": cfg.skip,
      "max_examples": cfg.max_examples,
      "sigma": spec.sigma,
      "q": spec.q,
      "levels": spec.levels,
      "offsets_sha256": smoothing.offsets_fingerprint(offsets),
      "model": classifier.metadata["model"],
      "training_noise": classifier.metadata["noise"],
      "stabilized": bool(classifier.metadata.get("stability", False)),
      "checkpoint_step": classifier.step,
      "compute_dtype": (
          cfg.get("compute_dtype")
          or classifier.metadata.get("compute_dtype", "float32")
      ),
      # Names the file, not the run: a run may be resumed on another
      # number of processes.
      "process_index": jax.process_index(),
  }
  if methods.method(cfg.method).randomized:
    meta.update(n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, seed=cfg.seed)
  if methods.method(cfg.method).decides:
    # Its rows answer at these radii only: resuming with others is refused
    # (a metadata mismatch), and analyze tabulates it at them alone.
    meta["radii"] = [float(r) for r in decide_batch.requested_radii(cfg)]
    if methods.method(cfg.method).randomized:
      meta["first_look"] = int(
          min(cfg.get("first_look", sequential.DEFAULT_FIRST_LOOK), cfg.n)
      )
  meta.update(denoising.run_metadata(classifier))
  return meta


def batching_record(
    certify_config,
    classifier: checkpoints.Classifier,
    spec: smoothing.SmoothingSpec,
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
  """How the rows are computed: batch, chunk and forward-pass sizes.

  Counts do not depend on them for a classifier whose logits for an input do
  not depend on the rest of its batch (ours, in eval mode), so they are not
  part of what identifies a run; they are recorded in the results metadata,
  and a resume under other values is logged, so that it is visible.
  """
  cfg = certify_config
  devices = mesh.size
  # The axis a chunk cuts: the L splits, or the n counting draws.
  num_items = spec.levels if methods.method(cfg.method).exact else cfg.n
  chunk = (
      cfg.chunk_size
      if cfg.chunk_size > 0
      else chunking.auto_chunk_size(
          classifier.apply_fn,
          classifier.variables,
          tuple(classifier.metadata["input_shape"]),
          cfg.batch_size,
          num_items,
          devices=devices,
      )
  )
  rows = (
      -(-cfg.batch_size // devices)
      if cfg.batch_size >= devices
      else (cfg.batch_size)
  )
  return {
      "batch_size": cfg.batch_size,
      "chunk_size": chunk,
      "forward_batch": rows * chunk,
      "devices": devices,
      "backend": jax.default_backend(),
  }


def record_batching(path: str, record: dict[str, Any]) -> None:
  """Adds the batching of this run to the metadata of results file `path`
  (once per distinct record) and logs a resume under different batching."""
  meta = results_metadata.read_metadata(path)
  history = meta.get("batching", [])
  if history and history[-1] != record:
    logging.warning(
        "%s: resumed with other batching than its earlier rows (%s, now %s); "
        "counts do not change for a classifier whose logits do not depend "
        "on the rest of its batch.",
        path,
        history[-1],
        record,
    )
  if record not in history:
    results_metadata.update_metadata(path, batching=history + [record])


def check_computation(
    path: str, record: dict[str, Any], allow_other: bool
) -> None:
  """Records how the classifier is computed (backend, jax and jaxlib
  versions, compute dtype, XLA flags) and refuses to resume a results file
  under another computation: it may change low bits of the logits, and so
  votes at near ties, making the file's rows certificates of two different
  classifiers. `allow_other` turns the refusal into a warning (recorded)."""
  history = results_metadata.read_metadata(path).get("computation", [])
  if history and history[-1] != record:
    before = history[-1]
    changes = "; ".join(
        f"{k}: {before.get(k)!r} then, {record.get(k)!r} now"
        for k in sorted(set(before) | set(record))
        if before.get(k) != record.get(k)
    )
    if not allow_other:
      raise ValueError(
          f"{path} was computed differently ({changes}). Resume with the "
          f"recorded settings (XLA_FLAGS; DSSN_JAX_XLA_DEFAULTS=0 turns off "
          f"dssn-jax's default XLA options), certify into a new results "
          f"file, or pass --config.certify.allow_other_computation=True to "
          f"add rows of the classifier as computed now."
      )
    logging.warning(
        "%s: resumed under another computation (%s), as "
        "allowed by certify.allow_other_computation.",
        path,
        changes,
    )
  if record not in history:
    results_metadata.update_metadata(path, computation=history + [record])
