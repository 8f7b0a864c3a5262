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

Multi-host: every JAX process certifies its own slice of the subset on its
local devices into its own file (`certify_dssn.tsv`,
`certify_dssn.process1.tsv`, ...); analysis merges them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
import tqdm

from dssn_jax import certify
from dssn_jax import checkpoints
from dssn_jax import data
from dssn_jax import denoising
from dssn_jax import results
from dssn_jax import smoothing

METHODS = ("dssn",) + certify.RANDOMIZED_NOISE_KINDS


def results_path(workdir: str, config) -> str:
  """This process's results file for the config's method."""
  name = config.certify.results_name or f"certify_{config.certify.method}"
  if jax.process_index() > 0:
    name += f".process{jax.process_index()}"
  return os.path.join(workdir, name + ".tsv")


def _resolve_smoothing(config, classifier: checkpoints.Classifier):
  """The spec and offsets to certify with; checks the config against them."""
  meta = classifier.metadata
  wanted = {"sigma": config.sigma, "q": config.q,
            "offsets_seed": config.offsets_seed,
            "offsets_layout": config.offsets_layout,
            "dataset": config.dataset, "model": config.model}
  checkpoints.check_matches(
      meta, wanted, ("dataset", "model"),
      what=f"The checkpoint's model ({meta['model']} on {meta['dataset']})",
      fix="Certify with the config the classifier was trained with.")
  if not config.certify.override_smoothing:
    checkpoints.check_matches(
        meta, wanted, ("sigma", "q", "offsets_seed", "offsets_layout"),
        what="The checkpoint's smoothing",
        fix=(f"Pass --config.sigma={meta['sigma']} (and the checkpoint's "
             f"offsets), or --config.certify.override_smoothing=True to "
             f"certify with the config's smoothing instead."))
    return classifier.spec, classifier.offsets
  spec = smoothing.SmoothingSpec(config.sigma, config.q)
  offsets = smoothing.make_offsets(config.offsets_seed, meta["input_shape"],
                                   spec.levels, config.offsets_layout)
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
      "compute_dtype": (cfg.get("compute_dtype") or
                        classifier.metadata.get("compute_dtype", "float32")),
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
  }
  if cfg.method != "dssn":
    meta.update(n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, seed=cfg.seed)
  return meta


def _certify_batch(config, classifier, spec, offsets, mesh, x, index):
  """Columns of one batch: predict, radius and the method's own columns."""
  cfg = config.certify
  chunk = cfg.chunk_size if cfg.chunk_size > 0 else None
  if cfg.method == "dssn":
    counts = np.asarray(certify.dssn_counts(
        classifier.apply_fn, x, offsets, spec, params=classifier.variables,
        chunk_size=chunk, mesh=mesh))
    pred, steps, radius = certify.certify_from_counts(counts, spec)
    ordered = np.sort(counts, axis=1)
    return {"predict": pred, "radius": radius, "steps": steps,
            "count_top": ordered[:, -1], "count_runner_up": ordered[:, -2]}
  cert = certify.certify_randomized(
      classifier.apply_fn, x, spec, jax.random.key(cfg.seed), noise=cfg.method,
      n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, params=classifier.variables,
      row_ids=index, chunk_size=chunk, mesh=mesh)
  return {"predict": cert.pred, "radius": cert.radius,
          "p_lower": cert.p_lower}


def _to_inputs(images: np.ndarray) -> np.ndarray:
  """uint8 images to [0, 1] floats on the 1/255 grid (others pass through to
  the certifier's checks, which reject off-grid or out-of-range pixels)."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255
  return images.astype(np.float32)


def summarize(path: str, radii) -> dict[str, Any]:
  """Clean and certified accuracy, seconds per image of a results file."""
  rows = results.read_results(path)
  accuracy = results.certified_accuracy(rows["radius"], rows["correct"],
                                        radii, predict=rows["predict"])
  return {
      "images": int(rows["idx"].size),
      "clean_accuracy": float(np.mean(rows["correct"])),
      "certified_accuracy": {str(r): float(a) for r, a in zip(radii,
                                                                accuracy)},
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
  if cfg.method not in METHODS:
    raise ValueError(f"Unknown certification method {cfg.method!r}; expected "
                     f"one of {METHODS}.")
  data.hide_tf_from_accelerators()
  classifier = checkpoints.load_classifier(
      workdir, compute_dtype=cfg.get("compute_dtype") or None)
  if cfg.get("denoiser_workdir"):  # Denoised smoothing: certify f o D.
    classifier = denoising.compose(classifier, denoising.load_denoiser(
        cfg.denoiser_workdir, compute_dtype=cfg.get("compute_dtype") or None))
  spec, offsets = _resolve_smoothing(config, classifier)
  batches = data.eval_dataset(
      config.dataset, split=cfg.split, start=cfg.start, skip=cfg.skip,
      max_examples=None if cfg.max_examples < 0 else cfg.max_examples,
      batch_size=cfg.batch_size * jax.process_count(),
      data_dir=config.data_dir)
  mesh = certify.make_mesh(jax.local_devices())
  path = results_path(workdir, config)
  metadata = run_metadata(config, classifier, spec, offsets)
  metadata.update(denoising.run_metadata(classifier))
  with results.ResultsWriter(path, cfg.method, metadata) as writer:
    done = writer.done_indices
    progress = tqdm.tqdm(total=batches.num_local_examples,
                         initial=len(done), unit="img",
                         desc=f"certify {cfg.method} sigma={spec.sigma}",
                         disable=jax.process_index() > 0)
    done = np.fromiter(done, np.int64, len(done))
    warm = False
    for batch in batches:
      index = batch["index"]
      todo = batch["mask"] & ~np.isin(index, done)
      if not todo.any():
        continue
      if not warm:  # Compile outside the timed region: time is per image.
        _certify_batch(config, classifier, spec, offsets, mesh,
                       _to_inputs(batch["image"]), index)
        warm = True
      start = time.perf_counter()
      columns = _certify_batch(config, classifier, spec, offsets, mesh,
                               _to_inputs(batch["image"]), index)
      seconds = (time.perf_counter() - start) / todo.sum()
      label = batch["label"]
      rows = {"idx": index, "label": label, "correct": (
          columns["predict"] == label).astype(int), "time": np.full(
              index.shape, seconds), **columns}
      writer.write_rows({k: np.asarray(v)[todo] for k, v in rows.items()})
      progress.update(int(todo.sum()))
      progress.set_postfix(img_s=f"{1 / seconds:.2f}")
    progress.close()
  summary = {"results": path, "method": cfg.method, "sigma": spec.sigma,
             **summarize(path, tuple(cfg.radii))}
  with open(path[:-len(".tsv")] + ".summary.json", "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  """A few human-readable lines of a summary."""
  lines = [f"{summary['images']} images, {summary['method']} at sigma="
           f"{summary['sigma']}: clean accuracy "
           f"{100 * summary['clean_accuracy']:.2f}%, "
           f"{summary['seconds_per_image']:.4f} s/image",
           "certified accuracy: " + ", ".join(
               f"r={r}: {100 * a:.2f}%"
               for r, a in summary["certified_accuracy"].items())]
  return "\n".join(lines)
