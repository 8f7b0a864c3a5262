"""Certification runs: a trained checkpoint and a test split to per-image rows.

`certify_workdir(config, workdir)` restores the classifier of a training
workdir with its smoothing, certifies the config's subset of the test split
with the config's method (`dssn`, exact; `uniform` or `ssn`, randomized), and
appends one row per image to a results file in the workdir, fsynced per batch.
Rerunning the same command skips the images already in the file; a file from
a different run (other smoothing, method, subset, checkpoint) is refused.

Smoothing comes from the checkpoint. A config sigma, q, offsets seed or layout
that disagrees with it is an error, unless `certify.override_smoothing` says
to use the config's (the certificate is valid for any offsets, but a
classifier certified with offsets other than its training ones loses
accuracy).

With `certify.denoiser_workdir`, the classifier of `workdir` is certified
behind that workdir's denoiser (`denoising.compose`): smoothing is the
denoiser's, and the results metadata records both checkpoints.

Multi-host: every JAX process certifies its own contiguous slice of the
subset on its local devices into its own file (`certify_dssn.tsv` for process
0, `certify_dssn.process1.tsv`, ...), so no two processes ever append to one
file and each file is resumable on its own. Before anyone writes, every
process reads the rows of all files of the run (which must belong to the same
run) and skips those images: a restart with another number of processes
re-slices the subset but certifies every image exactly once. When all
processes are done, process 0 writes the summary of the merged files;
`read_results` and `experiments.analyze` merge them (an image in two files is
an error).
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np
import tqdm

from dssn_jax.core import certify
from dssn_jax.training import checkpoints
from dssn_jax.runtime import config_checks
from dssn_jax.training import denoising
from dssn_jax.runtime import distributed
from dssn_jax.data import input_pipeline
from dssn_jax.core import chunking
from dssn_jax.core import methods
from dssn_jax.runs import results
from dssn_jax.core import smoothing
from dssn_jax.runtime import xla_options


def results_path(workdir: str, config) -> str:
  """This process's results file for the config's method."""
  name = config.certify.results_name or f"certify_{config.certify.method}"
  if jax.process_index() > 0:
    name += f".process{jax.process_index()}"
  return os.path.join(workdir, name + ".tsv")


def run_files(workdir: str, config) -> list[str]:
  """The existing results files of the config's run, of every process."""
  name = config.certify.results_name or f"certify_{config.certify.method}"
  first = os.path.join(workdir, name + ".tsv")
  others = glob.glob(
      os.path.join(glob.escape(workdir), glob.escape(name) + ".process*.tsv")
  )
  return ([first] if os.path.exists(first) else []) + sorted(others)


def _done_in_other_files(workdir: str, config, metadata) -> np.ndarray:
  """idx of the rows in the run's files of other processes (this process's
  own file is its writer's business); refuses files of another run, whose
  rows must not stand in for this run's."""
  own = os.path.abspath(results_path(workdir, config))
  others = [p for p in run_files(workdir, config) if os.path.abspath(p) != own]
  for path in others:
    stored = results.read_metadata(path)
    problems = results.diff_metadata(
        {"method": stored.get("method"), **(stored.get("run") or {})},
        {"method": config.certify.method, **metadata},
        ignore=("process_index",),
    )
    if problems:
      raise ValueError(
          f"Results file {path} of another process belongs to a different "
          f"run; refusing to mix runs. Mismatching fields: "
          + "; ".join(problems)
          + ". Use another --workdir or "
          "--config.certify.results_name, or delete that run's files."
      )
  if not others:
    return np.zeros((0,), np.int64)
  return results.read_results(others)["idx"]


def _resolve_smoothing(config, classifier: checkpoints.Classifier):
  """The spec and offsets to certify with; checks the config against them."""
  meta = classifier.metadata
  wanted = {
      "sigma": config.sigma,
      "q": config.q,
      "offsets_seed": config.offsets_seed,
      "offsets_layout": config.offsets_layout,
      "dataset": config.dataset,
      "model": config.model,
  }
  checkpoints.check_matches(
      meta,
      wanted,
      ("dataset", "model"),
      what=f"The checkpoint's model ({meta['model']} on {meta['dataset']})",
      fix="Certify with the config the classifier was trained with.",
  )
  if not config.certify.override_smoothing:
    checkpoints.check_matches(
        meta,
        wanted,
        ("sigma", "q", "offsets_seed", "offsets_layout"),
        what="The checkpoint's smoothing",
        fix=(
            f"Pass --config.sigma={meta['sigma']} (and the checkpoint's "
            f"offsets), or --config.certify.override_smoothing=True to "
            f"certify with the config's smoothing instead."
        ),
    )
    return classifier.spec, classifier.offsets
  spec = smoothing.SmoothingSpec(config.sigma, config.q)
  offsets = smoothing.make_offsets(
      config.offsets_seed,
      meta["input_shape"],
      spec.levels,
      config.offsets_layout,
  )
  return spec, offsets


def run_metadata(config, classifier, spec, offsets) -> dict[str, Any]:
  """What identifies a certification run (batching and chunking excluded:
  they do not change any row)."""
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
  if cfg.method != "dssn":
    meta.update(n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, seed=cfg.seed)
  return meta


def batching_record(config, classifier, spec, mesh) -> dict[str, Any]:
  """How the rows are computed: batch, chunk and forward-pass sizes.

  Counts do not depend on them for a classifier whose logits for an input do
  not depend on the rest of its batch (ours, in eval mode), so they are not
  part of what identifies a run; they are recorded in the results metadata,
  and a resume under other values is logged, so that it is visible.
  """
  cfg = config.certify
  devices = mesh.size
  num_items = spec.levels if cfg.method == "dssn" else cfg.n
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


def _certify_batch(config, classifier, spec, offsets, mesh, x, index):
  """Columns of one batch: predict, radius and the method's own columns."""
  cfg = config.certify
  chunk = cfg.chunk_size if cfg.chunk_size > 0 else None
  if cfg.method == "dssn":
    counts = np.asarray(
        certify.dssn_counts(
            classifier.apply_fn,
            x,
            offsets,
            spec,
            params=classifier.variables,
            chunk_size=chunk,
            mesh=mesh,
        )
    )
    failed = np.flatnonzero(counts[:, 0] < 0)
    if failed.size:  # Inputs were checked: the logits were not finite.
      raise ValueError(
          certify.failed_rows_message(
              [int(i) for i in np.asarray(index)[failed]]
          ).replace("at rows", "of images")
      )
    pred, steps, radius = certify.certify_from_counts(counts, spec)
    ordered = np.sort(counts, axis=1)
    return {
        "predict": pred,
        "radius": radius,
        "steps": steps,
        "count_top": ordered[:, -1],
        "count_runner_up": ordered[:, -2],
    }
  cert = certify.certify_randomized(
      classifier.apply_fn,
      x,
      spec,
      jax.random.key(cfg.seed),
      noise=cfg.method,
      n0=cfg.n0,
      n=cfg.n,
      alpha=cfg.alpha,
      params=classifier.variables,
      row_ids=index,
      chunk_size=chunk,
      mesh=mesh,
  )
  return {"predict": cert.pred, "radius": cert.radius, "p_lower": cert.p_lower}


def _to_inputs(images: np.ndarray) -> np.ndarray:
  """uint8 images to [0, 1] floats on the 1/255 grid (others pass through to
  the certifier's checks, which reject off-grid or out-of-range pixels)."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255
  return images.astype(np.float32)


def summarize(path, radii) -> dict[str, Any]:
  """Clean and certified accuracy, seconds per image of a results file (or
  of the merged files of a multi-process run)."""
  rows = results.read_results(path)
  accuracy = results.certified_accuracy(
      rows["radius"], rows["correct"], radii, predict=rows["predict"]
  )
  return {
      "images": int(rows["idx"].size),
      "clean_accuracy": float(np.mean(rows["correct"])),
      "certified_accuracy": {str(r): float(a) for r, a in zip(radii, accuracy)},
      "seconds_per_image": float(np.mean(rows["time"])),
  }


def certify_workdir(config, workdir: str) -> dict[str, Any]:
  """Certifies the config's test subset with the workdir's classifier.

  Args:
    config: a config of configs/ (its `certify` fields choose method, subset,
      batch and chunk sizes).
    workdir: a training workdir; results go next to its checkpoints.

  Returns:
    The summary, also written to `<results file>.summary.json`.
  """
  cfg = config.certify
  if cfg.method not in methods.METHODS:
    raise ValueError(
        f"Unknown certification method {cfg.method!r}; expected "
        f"one of {methods.METHODS}."
    )
  config_checks.check_integer_fields(
      config,
      [
          f
          for f in (
              config_checks.SENTINEL_FIELDS
              + config_checks.POSITIVE_FIELDS
              + config_checks.NON_NEGATIVE_FIELDS
          )
          if f.startswith("certify.")
      ],
  )
  input_pipeline.check_data_dir(config.data_dir)
  input_pipeline.hide_tf_from_accelerators()
  classifier = checkpoints.load_classifier(
      workdir, compute_dtype=cfg.get("compute_dtype") or None
  )
  if cfg.get("denoiser_workdir"):  # Denoised smoothing: certify f o D.
    classifier = denoising.compose(
        classifier,
        denoising.load_denoiser(
            cfg.denoiser_workdir, compute_dtype=cfg.get("compute_dtype") or None
        ),
    )
  spec, offsets = _resolve_smoothing(config, classifier)
  batches = input_pipeline.eval_dataset(
      config.dataset,
      split=cfg.split,
      start=cfg.start,
      skip=cfg.skip,
      max_examples=None if cfg.max_examples < 0 else cfg.max_examples,
      batch_size=cfg.batch_size * jax.process_count(),
      data_dir=config.data_dir,
  )
  mesh = certify.make_mesh(jax.local_devices())
  path = results_path(workdir, config)
  metadata = run_metadata(config, classifier, spec, offsets)
  metadata.update(denoising.run_metadata(classifier))
  subset = range(
      cfg.start, cfg.start + cfg.skip * batches.num_examples, cfg.skip
  )
  try:
    writer = results.ResultsWriter(path, cfg.method, metadata).open()
  except OSError as e:
    if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise
    return _summarize_read_only(config, spec, workdir, metadata, subset, e)
  done_elsewhere = _done_in_other_files(workdir, config, metadata)
  # Nobody writes before everyone has read the others' files.
  distributed.barrier("certify: files read")
  with writer:
    _check_rows_requested(writer, subset, path)
    _record_batching(path, batching_record(config, classifier, spec, mesh))
    _check_computation(
        path,
        xla_options.computation_record(metadata["compute_dtype"]),
        cfg.get("allow_other_computation", False),
    )
    done = np.concatenate(
        [
            np.fromiter(writer.done_indices, np.int64, writer.num_rows),
            done_elsewhere,
        ]
    )
    progress = tqdm.tqdm(
        total=batches.num_local_examples,
        unit="img",
        desc=f"certify {cfg.method} sigma={spec.sigma}",
        disable=jax.process_index() > 0,
    )
    warm = False
    for batch in batches:
      index = batch["index"]
      todo = batch["mask"] & ~np.isin(index, done)
      progress.update(int(batch["mask"].sum() - todo.sum()))  # Done before.
      if not todo.any():
        continue
      certify_batch = functools.partial(
          _certify_batch,
          config,
          classifier,
          spec,
          offsets,
          mesh,
          _to_inputs(batch["image"]),
          index,
      )
      if not warm:  # Compile outside the timed region: time is per image.
        with certify.compile_only():  # Without certifying the batch twice.
          certify_batch()
        warm = True
      start = time.perf_counter()
      columns = certify_batch()
      seconds = (time.perf_counter() - start) / todo.sum()
      label = batch["label"]
      rows = {
          "idx": index,
          "label": label,
          "correct": (columns["predict"] == label).astype(int),
          "time": np.full(index.shape, seconds),
          **columns,
      }
      writer.write_rows({k: np.asarray(v)[todo] for k, v in rows.items()})
      progress.update(int(todo.sum()))
      progress.set_postfix(img_s=f"{1 / seconds:.2f}")
    progress.close()
  distributed.barrier("certify: all files complete")
  return _write_summary(config, spec, workdir)


def _write_summary(config, spec, workdir: str) -> dict[str, Any]:
  """The summary of the run's results files (of every process), also
  written next to the first one by process 0 when possible."""
  cfg = config.certify
  files = run_files(workdir, config)
  summary = {
      "results": files[0],
      "results_files": files,
      "method": cfg.method,
      "sigma": spec.sigma,
      **summarize(files, tuple(cfg.radii)),
  }
  if distributed.is_primary():
    try:
      with open(files[0][: -len(".tsv")] + ".summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    except OSError as e:
      logging.warning(
          "Summary not written next to %s (%s).", files[0], e.strerror
      )
  return summary


def _summarize_read_only(
    config, spec, workdir: str, metadata, subset: range, error: OSError
) -> dict[str, Any]:
  """A finished run whose results file we cannot write (read-only storage)
  is summarized; an unfinished one is an error that says what to do."""
  path = results_path(workdir, config)
  if not os.path.exists(path):
    raise ValueError(
        f"Cannot create {path} ({error.strerror}): the workdir is not "
        f"writable. Certify into a writable copy of the workdir."
    ) from error
  results.check_metadata(path, config.certify.method, metadata)
  done = set(results.read_results(run_files(workdir, config))["idx"].tolist())
  missing = set(subset) - done
  if missing:
    raise ValueError(
        f"{path} cannot be opened for writing ({error.strerror}) and "
        f"{len(missing)} of the requested images have no row yet. Certify "
        f"into a writable copy of the workdir, or make it writable."
    ) from error
  logging.warning(
      "%s is read-only; every requested image has a row, so it "
      "is only summarized.",
      path,
  )
  return _write_summary(config, spec, workdir)


def _check_rows_requested(writer, subset: range, path: str) -> None:
  """Refuses a results file holding rows of images this run does not ask
  for (appended by hand, or another subset's): they would be counted."""
  extra = sorted(i for i in writer.done_indices if i not in subset)
  if extra:
    raise ValueError(
        f"{path}: line {writer.line_of(extra[0])} has idx {extra[0]}, which "
        f"is not among the images this run certifies ({len(extra)} such "
        f"rows); they would be counted in the summary. Delete those lines, "
        f"or the file to start over."
    )


def _record_batching(path: str, record: dict[str, Any]) -> None:
  """Adds the batching of this run to the results metadata (once per
  distinct record) and logs a resume under different batching."""
  meta = results.read_metadata(path)
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
    results.update_metadata(path, batching=history + [record])


def _check_computation(
    path: str, record: dict[str, Any], allow_other: bool
) -> None:
  """Records how the classifier is computed (backend, jax and jaxlib
  versions, compute dtype, XLA flags) and refuses to resume a results file
  under another computation: it may change low bits of the logits, and so
  votes at near ties, making the file's rows certificates of two different
  classifiers. `allow_other` turns the refusal into a warning (recorded)."""
  history = results.read_metadata(path).get("computation", [])
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
    results.update_metadata(path, computation=history + [record])


def format_summary(summary: dict[str, Any]) -> str:
  """A few human-readable lines of a summary."""
  lines = [
      f"{summary['images']} images, {summary['method']} at sigma="
      f"{summary['sigma']}: clean accuracy "
      f"{100 * summary['clean_accuracy']:.2f}%, "
      f"{summary['seconds_per_image']:.4f} s/image",
      "certified accuracy: "
      + ", ".join(
          f"r={r}: {100 * a:.2f}%"
          for r, a in summary["certified_accuracy"].items()
      ),
  ]
  return "\n".join(lines)
