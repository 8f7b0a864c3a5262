"""One batch of test images to the columns of its results rows, any method.

The one place that turns a certification config into a certifier call: the
exact method (`methods.method(name).exact`) counts the votes of all L splits
(`dssn.dssn_counts`) and derives its certificate from them; the randomized
ones sample (`randomized.certify_randomized`) and record, beside the paper's
certificate, the top-2 and box-constrained ones of the same counts
(`box.certify_box`). Certification runs
(certify_workdir.py), the timing benchmark and the tests all call
`certify_batch`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from dssn_jax.core import box
from dssn_jax.core import dssn
from dssn_jax.core import inputs
from dssn_jax.core import methods
from dssn_jax.core import randomized
from dssn_jax.core import smoothing
from dssn_jax.runs import decide_batch
from dssn_jax.training import checkpoints


def to_inputs(images: np.ndarray) -> np.ndarray:
  """uint8 images (B, H, W, C) to float32 in [0, 1] on the 1/255 grid; other
  dtypes pass through as float32 to the certifier's checks, which reject
  off-grid or out-of-range pixels."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255
  return images.astype(np.float32)


def forward_passes_per_image(certify_config, spec: smoothing.SmoothingSpec):
  """Forward passes of the classifier per certified image: the L splits of
  the exact method, or n0 selection + n counting draws of a randomized one."""
  if methods.method(certify_config.method).exact:
    return spec.levels
  return certify_config.n0 + certify_config.n


def certify_batch(
    certify_config,
    classifier: checkpoints.Classifier,
    spec: smoothing.SmoothingSpec,
    offsets,
    x,
    index,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
  """Certifies a batch with the config's method.

  Args:
    certify_config: a config's `certify` fields: `method`, `chunk_size`
      (-1: sized from the batch) and, for a randomized method, `seed`, `n0`,
      `n` and `alpha`.
    classifier: the classifier (`apply_fn`, `variables`).
    spec: the smoothing (sigma, q).
    offsets: the split offsets v, shaped like one image (exact method only).
    x: images (B, H, W, C), float32 on the 1/255 grid (`to_inputs`).
    index: (B,) dataset indices of the images; a randomized method draws the
      noise of an image from its index, so rows do not depend on batching.
    mesh: devices to shard the batch over (None: the default device).

  Returns:
    (B,) arrays: `predict` (class, or -1 when a randomized method abstains),
    `radius` (certified l1 radius) and the method's own result columns
    (`methods.method(name).result_columns`; results_format.py says what
    each holds).

  Raises:
    ValueError: the classifier's logits were not finite for some image.
  """
  cfg = certify_config
  if methods.method(cfg.method).decides:  # At the requested radii only.
    return decide_batch.decide_batch(
        cfg, classifier, spec, offsets, x, index, mesh
    )
  chunk = cfg.chunk_size if cfg.chunk_size > 0 else None
  if methods.method(cfg.method).exact:
    counts = np.asarray(
        dssn.dssn_counts(
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
          inputs.failed_rows_message(
              [int(i) for i in np.asarray(index)[failed]]
          ).replace("at rows", "of images")
      )
    pred, steps, radius = dssn.certify_from_counts(counts, spec)
    ordered = np.sort(counts, axis=1)
    return {
        "predict": pred,
        "radius": radius,
        "steps": steps,
        "count_top": ordered[:, -1],
        "count_runner_up": ordered[:, -2],
    }
  cert = randomized.certify_randomized(
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
  # The top-2 and box certificates from the same counts and selection (their
  # p_a lower bound is p_lower: the same Clopper-Pearson bound at alpha).
  top2 = box.certify_box(
      cert.counts,
      cert.selected,
      np.asarray(x, np.float64),
      n=cfg.n,
      alpha=cfg.alpha,
      lam=spec.lam,
  )
  return {
      "predict": cert.pred,
      "radius": cert.radius,
      "p_lower": cert.p_lower,
      "count_top": cert.count_top,
      "count_runner_up": box.top_two_counts(cert.counts, cert.selected)[1],
      "predict_top2": top2.pred,
      "p_b_upper": top2.p_b_upper,
      "radius_top2": top2.radius_top2,
      "radius_box": top2.radius_box,
  }


def compile_batch(
    certify_config,
    classifier: checkpoints.Classifier,
    spec: smoothing.SmoothingSpec,
    offsets,
    x,
    mesh: jax.sharding.Mesh | None = None,
) -> None:
  """Compiles the programs `certify_batch` runs on batches shaped like x.

  From shapes and dtypes alone (x may be a `jax.ShapeDtypeStruct`): nothing
  is certified or placed on a device, and a `certify_batch` call with the
  same arguments on a batch of x's shape then compiles nothing (JAX's cache
  holds the programs). For moving compilation out of a timed region.
  Arguments as in `certify_batch`.
  """
  cfg = certify_config
  if methods.method(cfg.method).decides:
    return  # Its packed programs compile on first use (one per shape).
  x = jax.ShapeDtypeStruct(x.shape, x.dtype)
  common = dict(
      params=classifier.variables,
      chunk_size=cfg.chunk_size if cfg.chunk_size > 0 else None,
      mesh=mesh,
  )
  if methods.method(cfg.method).exact:
    programs = [
        dssn.lower_counts(classifier.apply_fn, x, offsets, spec, **common)
    ]
  else:
    programs = randomized.lower_randomized(
        classifier.apply_fn,
        x,
        spec,
        jax.eval_shape(jax.random.key, cfg.seed),
        noise=cfg.method,
        n0=cfg.n0,
        n=cfg.n,
        **common,
    )
  for lowered in programs:
    lowered.compile()
