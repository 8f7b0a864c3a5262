"""One batch of test images to results columns, for a deciding method.

A deciding method (`methods.method(name).decides`: "dssn_early",
"uniform_seq", "ssn_seq") answers at the run's requested radii
(`certify.radii`, plus 0) with as few samples as decide them (design.md,
section 7). Its row says what it decided and nothing more: `radius` is the
largest requested radius certified (for an abstaining sequential run, the
negative 2 lambda (p_lower - 1/2) of its stopping look, as the fixed-N run
writes), `radius_refused` the smallest requested radius refused (inf where
none is), `samples` the splits or counting draws the answers rest on.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from dssn_jax.core import dssn_decide
from dssn_jax.core import inputs
from dssn_jax.core import methods
from dssn_jax.core import randomized_decide
from dssn_jax.core import sequential
from dssn_jax.core import smoothing
from dssn_jax.training import checkpoints


def requested_radii(certify_config) -> np.ndarray:
  """The radii a deciding run answers at: the config's, and 0, sorted."""
  return np.unique(np.r_[0.0, np.asarray(certify_config.radii, np.float64)])


def _largest_and_refused(radii, certified):
  largest = np.where(certified, radii[None], -np.inf).max(axis=1)
  refused = np.where(~certified, radii[None], np.inf).min(axis=1)
  return largest, refused


def _raise_failed(failed, index):
  if failed.size:  # Inputs were checked: the logits were not finite.
    raise ValueError(
        inputs.failed_rows_message(
            [int(i) for i in np.asarray(index)[failed]]
        ).replace("at rows", "of images")
    )


def decide_batch(
    certify_config,
    classifier: checkpoints.Classifier,
    spec: smoothing.SmoothingSpec,
    offsets,
    x,
    index,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
  """`certify_batch` of a deciding method: (B,) columns of its rows.

  Args, returns and raises as `certify_batch.certify_batch`; the config's
  `radii` are the requested radii, its `n` the most counting draws
  (N_max) of a sequential method, `first_look` (default 100) its first
  look.
  """
  cfg = certify_config
  method = methods.method(cfg.method)
  radii = requested_radii(cfg)
  if method.exact:
    d = dssn_decide.dssn_decide(
        classifier.apply_fn,
        x,
        offsets,
        spec,
        radii,
        params=classifier.variables,
        mesh=mesh,
    )
    _raise_failed(np.flatnonzero(d.pred < 0), index)
    largest, refused = _largest_and_refused(radii, d.certified)
    ordered = np.sort(d.counts, axis=1)
    return {
        "predict": d.pred,
        "radius": largest,
        "samples": d.splits,
        "radius_refused": refused,
        "count_top": ordered[:, -1],
        "count_runner_up": ordered[:, -2],
    }
  cert = randomized_decide.sequential_certify(
      classifier.apply_fn,
      x,
      spec,
      jax.random.key(cfg.seed),
      radii,
      noise=method.noise_kind,
      n0=cfg.n0,
      n_max=cfg.n,
      first_look=min(
          cfg.get("first_look", sequential.DEFAULT_FIRST_LOOK), cfg.n
      ),
      alpha=cfg.alpha,
      params=classifier.variables,
      row_ids=index,
      mesh=mesh,
  )
  _raise_failed(np.flatnonzero(cert.samples == 0), index)
  largest, refused = _largest_and_refused(radii, cert.certified)
  abstain = 2 * spec.lam * (cert.p_lower - 0.5)
  return {
      "predict": cert.pred,
      "radius": np.where(cert.pred >= 0, largest, np.minimum(abstain, 0.0)),
      "samples": cert.samples,
      "radius_refused": refused,
      "p_lower": cert.p_lower,
      "count_top": cert.count_top,
  }
