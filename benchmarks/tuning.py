"""Tuning trials of the benchmark: forward-batch sweep and XLA option trials.

`forward_batch_sweep` times the raw jitted forward pass of a model at several
batch sizes, interleaved with the float32 matmul peak in every round, and
reports forward passes per second and the fraction of the best batch size: the
evidence for `chunking.DEFAULT_FORWARD_BATCH`.

`xla_flag_trials` runs a small measurement (matmul peak, raw forward) in a
fresh process per XLA_FLAGS setting (`python -m benchmarks.flag_trial`),
because XLA reads its options once per process. Settings alternate (A, B, A,
B, ...) so that drifting load from other processes hits all of them alike,
and each
setting's throughput is reported relative to the first (the baseline) setting
of the same alternation. Each trial also records the first logit of a fixed
batch: options that change it change the classifier that gets certified (see
docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import json
import os
import subprocess
import sys
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import measure


def forward_batch_sweep(
    name: str,
    batches: Sequence[int],
    *,
    repeats: int,
    warmup: int,
    peak_size: int,
    compute_dtype: str = "float32",
) -> dict[str, Any]:
  """Raw forward throughput of model `name` at each batch size.

  Returns:
    {"model", "compute_dtype", "batches": [{"batch", "forwards_per_second",
    "utilization", "fraction_of_best"}]}; statistics are medians over rounds
    with min and max.
  """
  subject = measure.make_subject(name, compute_dtype)
  peak_fn = measure.matmul(peak_size, jnp.float32)[0]
  peak_flops = 2.0 * peak_size**3
  fns, flops = {"peak": peak_fn}, {}
  for batch in batches:
    x = jnp.asarray(measure.grid_images(subject.input_shape, batch, seed=2))
    forward = jax.jit(subject.apply_fn).lower(subject.variables, x).compile()
    flops[batch] = measure.compiled_costs(forward)["flops"] or 0.0
    fns[batch] = functools.partial(forward, subject.variables, x)
  seconds = measure.timed_rounds(fns, repeats=repeats, warmup=warmup)
  peak_rate = [peak_flops / s for s in seconds["peak"]]
  rates = {b: [b / s for s in seconds[b]] for b in batches}
  best = max(np.median(r) for r in rates.values())
  rows = []
  for batch in batches:
    rows.append(
        {
            "batch": batch,
            "forwards_per_second": measure.summarize(rates[batch]),
            "utilization": measure.per_round(
                [flops[batch] / s for s in seconds[batch]], peak_rate
            ),
            "fraction_of_best": float(np.median(rates[batch]) / best),
        }
    )
  return {"model": name, "compute_dtype": compute_dtype, "batches": rows}


def _run_trial(
    flags: str,
    models: Sequence[tuple[str, int]],
    *,
    peak_size: int,
    repeats: int,
    timeout: float,
) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = flags
  env["DSSN_JAX_XLA_DEFAULTS"] = "0"  # Exactly these flags (xla_options).
  env.setdefault("PYTHONPATH", "")
  # The repository root, so that the child imports this checkout's packages.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + (
      os.pathsep + env["PYTHONPATH"] if env["PYTHONPATH"] else ""
  )
  args = json.dumps(
      {
          "flags": flags,
          "models": [list(m) for m in models],
          "peak_size": peak_size,
          "repeats": repeats,
      }
  )
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.flag_trial", args],
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )
  if proc.returncode != 0:
    return {"flags": flags, "error": proc.stderr.strip()[-2000:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def xla_flag_trials(
    settings: Sequence[str],
    models: Sequence[tuple[str, int]],
    *,
    alternations: int,
    peak_size: int,
    repeats: int,
    timeout: float = 1800,
    log: Callable[[str], None] = logging.info,
) -> dict[str, Any]:
  """Throughput of each XLA_FLAGS setting relative to settings[0].

  Args:
    settings: XLA_FLAGS strings; the first is the baseline (e.g. "").
    models: (model name, forward batch) pairs to time.
    alternations: how many times the whole list of settings is run.
    peak_size: the square matmul timed alongside.
    repeats: timed rounds inside each trial.

  Returns:
    {"trials": every trial's raw output, "settings": per setting the median
    over alternations of FLOP/s and of the ratio to the baseline trial of
    the same alternation, and the logits (equal to the baseline's or not)}.
  """
  trials = []
  for alternation in range(alternations):
    for flags in settings:
      log(f"  XLA_FLAGS={flags or '(none)'} (alternation {alternation + 1})")
      trial = _run_trial(
          flags, models, peak_size=peak_size, repeats=repeats, timeout=timeout
      )
      trial["alternation"] = alternation
      trials.append(trial)
  summary = []
  for flags in settings:
    mine = [t for t in trials if t["flags"] == flags and "error" not in t]
    errors = [
        t["error"] for t in trials if t["flags"] == flags and "error" in t
    ]
    entry: dict[str, Any] = {"flags": flags, "errors": errors[:1]}
    if mine:
      names = list(mine[0]["flops_per_second"])
      entry["flops_per_second"] = {
          k: measure.summarize([t["flops_per_second"][k] for t in mine])
          for k in names
      }
      ratios = {k: [] for k in names}
      for trial in mine:
        base = [
            t
            for t in trials
            if t["flags"] == settings[0]
            and t["alternation"] == trial["alternation"]
            and "error" not in t
        ]
        for k in names:
          if base:
            ratios[k].append(
                trial["flops_per_second"][k] / base[0]["flops_per_second"][k]
            )
      entry["ratio_to_baseline"] = {
          k: measure.summarize(v) for k, v in ratios.items() if v
      }
      entry["logits"] = mine[0]["logits"]
      base_trials = [
          t for t in trials if t["flags"] == settings[0] and "error" not in t
      ]
      entry["same_logits_as_baseline"] = bool(base_trials) and (
          mine[0]["logits"] == base_trials[0]["logits"]
      )
    summary.append(entry)
  return {
      "models": [list(m) for m in models],
      "trials": trials,
      "settings": summary,
  }


def _rate(stats, scale=1.0, digits=3) -> str:
  low, mid, high = (stats[k] * scale for k in ("min", "median", "max"))
  return f"{mid:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


def to_markdown(report: dict[str, Any]) -> list[str]:
  """Markdown lines of the tuning sections of a benchmark report."""
  lines = []
  if report.get("sweep"):
    lines += [
        "",
        "## Forward batch sweep (raw jitted forward)",
        "",
        "| model | batch | fwd/s | MFU | of the best batch |",
        "|---|---|---|---|---|",
    ]
    for row in report["sweep"]:
      for entry in row["batches"]:
        lines.append(
            f"| {row['model']} | {entry['batch']} | "
            f"{_rate(entry['forwards_per_second'], digits=4)} | "
            f"{_rate(entry['utilization'], digits=2)} | "
            f"{entry['fraction_of_best']:.3f} |"
        )
  trials = report.get("flag_trials")
  if trials:
    names = ["peak"] + [m[0] for m in trials["models"]]
    lines += [
        "",
        "## XLA_FLAGS trials (fresh process per setting, "
        "alternated; ratio to the first setting, per alternation)",
        "",
        "| XLA_FLAGS | "
        + " | ".join(f"{n} GFLOP/s | {n} ratio" for n in names)
        + " | logits equal to baseline |",
        "|---|" + "---|---|" * len(names) + "---|",
    ]
    for entry in trials["settings"]:
      if "flops_per_second" not in entry:
        lines.append(
            f"| `{entry['flags'] or '(none)'}` | error: "
            f"{entry['errors'][0][-200:] if entry['errors'] else ''}"
            + " |" * (2 * len(names) + 1)
        )
        continue
      cells = []
      for n in names:
        cells.append(_rate(entry["flops_per_second"][n], 1e-9))
        ratio = entry["ratio_to_baseline"].get(n)
        cells.append(_rate(ratio) if ratio else "n/a")
      lines.append(
          f"| `{entry['flags'] or '(none)'}` | "
          + " | ".join(cells)
          + f" | {entry['same_logits_as_baseline']} |"
      )
  return lines
