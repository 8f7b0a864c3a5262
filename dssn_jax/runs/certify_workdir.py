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
subset on its local devices into its own results file, after reading the
rows of the other processes' files (run_files.py); process 0 writes the
summary of the merged files.

This module is the loop; the results files and their summary are in
run_files.py, what their metadata records in run_records.py, and one batch's
certification in certify_batch.py.
"""

from __future__ import annotations

from collections.abc import Callable
import errno
import functools
import time
from typing import Any

import jax
import numpy as np
import tqdm

from dssn_jax.core import methods
from dssn_jax.core import placement
from dssn_jax.core import smoothing
from dssn_jax.data import eval_input
from dssn_jax.data import sources
from dssn_jax.runs import certify_batch
from dssn_jax.runs import results_writer
from dssn_jax.runs import run_files
from dssn_jax.runs import run_records
from dssn_jax.runtime import config_checks
from dssn_jax.runtime import distributed
from dssn_jax.runtime import xla_options
from dssn_jax.training import checkpoints
from dssn_jax.training import denoising


def certify_workdir(config, workdir: str) -> dict[str, Any]:
  """Certifies the config's test subset with the workdir's classifier.

  Args:
    config: a config of configs/ (its `certify` fields choose method, subset,
      batch and chunk sizes).
    workdir: a training workdir; results go next to its checkpoints.

  Returns:
    The summary, also written to `<results file>.summary.json`.
  """
  _check_config(config)
  config = _with_batch_size(config)
  cfg = config.certify
  classifier, spec, offsets = _load_classifier(config, workdir)
  batches = eval_input.eval_dataset(
      config.dataset,
      split=cfg.split,
      start=cfg.start,
      skip=cfg.skip,
      max_examples=None if cfg.max_examples < 0 else cfg.max_examples,
      batch_size=cfg.batch_size * jax.process_count(),
      data_dir=config.data_dir,
  )
  mesh = placement.make_mesh(jax.local_devices())
  path = run_files.results_path(workdir, cfg)
  metadata = run_records.run_metadata(config, classifier, spec, offsets)
  # All processes certify one run: same settings, computation, checkpoint.
  distributed.agree_on_run(
      "certification start",
      config,
      xla_options.computation_record(metadata["compute_dtype"]),
      run={k: v for k, v in metadata.items() if k != "process_index"},
  )
  subset = range(
      cfg.start, cfg.start + cfg.skip * batches.num_examples, cfg.skip
  )
  writer, read_only = None, None
  try:
    writer = results_writer.ResultsWriter(path, cfg.method, metadata).open()
  except OSError as e:
    if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise
    read_only = e
  # Nobody reads another process's file while that process creates it (its
  # header would be incomplete): the processes leave the start-up agreement
  # together.
  distributed.barrier("certify: files open")
  if read_only is not None:
    return run_files.summarize_read_only(
        workdir, cfg, spec.sigma, metadata, subset, read_only
    )
  done_elsewhere = run_files.done_in_other_files(workdir, cfg, metadata)
  # Nobody writes before everyone has read the others' files.
  distributed.barrier("certify: files read")
  with writer:
    run_files.check_rows_requested(writer, subset, path)
    run_records.record_batching(
        path, run_records.batching_record(cfg, classifier, spec, mesh)
    )
    run_records.check_computation(
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
    batch_args = (cfg, classifier, spec, offsets)
    _certify_rows(
        writer,
        batches,
        done,
        functools.partial(certify_batch.certify_batch, *batch_args, mesh=mesh),
        functools.partial(certify_batch.compile_batch, *batch_args, mesh=mesh),
        desc=f"certify {cfg.method} sigma={spec.sigma}",
    )
  distributed.barrier("certify: all files complete")
  return run_files.write_summary(workdir, cfg, spec.sigma)


def _with_batch_size(config):
  """The config with `certify.batch_size` -1 resolved: one image per local
  device. Fewer images than devices split each image's samples over
  devices, more put several images on a device; on accelerators one per
  device is the cheapest in the compilers' estimates (docs/accelerators.md,
  "Accelerator defaults")."""
  if config.certify.batch_size != -1:
    return config
  config = config.copy_and_resolve_references()
  config.certify.batch_size = jax.local_device_count()
  return config


def _check_config(config) -> None:
  """The method and the integer fields of `config.certify`."""
  if config.certify.method not in methods.METHODS:
    raise ValueError(
        f"Unknown certification method {config.certify.method!r}; expected "
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
  config_checks.check_certify_fields(config)
  sources.check_data_dir(config.data_dir)


def _load_classifier(config, workdir: str):
  """The classifier to certify (behind the config's denoiser, if any), with
  the smoothing spec and offsets to certify it with."""
  cfg = config.certify
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
  return classifier, spec, offsets


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


def _certify_rows(
    writer: results_writer.ResultsWriter,
    batches: eval_input.EvalBatches,
    done: np.ndarray,
    certify_fn: Callable[..., dict[str, Any]],
    compile_fn: Callable[..., None],
    desc: str,
) -> None:
  """Certifies the images of `batches` not in `done` and appends their rows.

  Args:
    writer: the open results file.
    batches: this process's batches (`image`, `label`, `index`, `mask`).
    done: idx of the images that already have a row, in any file of the run.
    certify_fn: `certify_fn(x, index)` -> the batch's certificate columns.
    compile_fn: `compile_fn(x)` compiles what certify_fn runs on batches
      shaped like x (a `jax.ShapeDtypeStruct`), without running it.
    desc: the progress bar's label.
  """
  progress = tqdm.tqdm(
      total=batches.num_local_examples,
      unit="img",
      desc=desc,
      disable=jax.process_index() > 0,
  )
  warm = False
  for batch in batches:
    index = batch["index"]
    todo = batch["mask"] & ~np.isin(index, done)
    progress.update(int(batch["mask"].sum() - todo.sum()))  # Done before.
    if not todo.any():
      continue
    x = certify_batch.to_inputs(batch["image"])
    if not warm:  # Compile outside the timed region: time is per image.
      compile_fn(jax.ShapeDtypeStruct(x.shape, x.dtype))  # Runs nothing.
      warm = True
    start = time.perf_counter()
    columns = certify_fn(x, index)
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
