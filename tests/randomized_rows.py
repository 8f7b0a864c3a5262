"""Results rows of randomized runs, for tests that write their own files.

A randomized row holds the paper's certificate (p_lower, radius) and the
top-2 and box-constrained ones of the same counts (core/box.py). Tests that
make rows from the selected class's count use `top2_columns`, which gives
the other votes to a runner-up class (all of them, unless told) and a third
class.
"""

import numpy as np

from dssn_jax.core import box


def top2_columns(
    count_top, selected, *, n, alpha, lam, x=None, count_runner_up=None
) -> dict:
  """The columns after p_lower of randomized rows (results_format.py).

  Args:
    count_top: (B,) votes of the selected class among the n counting draws.
    selected: (B,) the selected classes (or one class for all rows).
    n, alpha, lam: the run's counting draws, level and noise half-width.
    x: (B, ...) the inputs in [0, 1]; default one mid-grey pixel each.
    count_runner_up: (B,) votes of the runner-up (at most n - count_top;
      the rest go to a third class); default n - count_top.

  Returns:
    count_top, count_runner_up, predict_top2, p_b_upper,
    radius_top2, radius_box: (B,) each, as `certify_batch` writes them.
  """
  count_top = np.asarray(count_top, np.int64)
  if count_runner_up is None:
    count_runner_up = n - count_top
  count_runner_up = np.asarray(count_runner_up, np.int64)
  rows = count_top.size
  selected = np.broadcast_to(np.asarray(selected, np.int64), (rows,))
  classes = int(selected.max(initial=0)) + 3
  counts = np.zeros((rows, classes), np.int64)
  counts[np.arange(rows), selected] = count_top
  counts[np.arange(rows), (selected + 1) % classes] = count_runner_up
  counts[np.arange(rows), (selected + 2) % classes] = (
      n - count_top - count_runner_up
  )
  if x is None:
    x = np.full((rows, 1), 0.5)
  cert = box.certify_box(counts, selected, x, n=n, alpha=alpha, lam=lam)
  return {
      "count_top": count_top,
      "count_runner_up": count_runner_up,
      "predict_top2": cert.pred,
      "p_b_upper": cert.p_b_upper,
      "radius_top2": cert.radius_top2,
      "radius_box": cert.radius_box,
  }
