r"""The measurements behind dssn-jax's CPU defaults.

  python -m benchmarks.cpu_defaults --outdir=runs/cpu_defaults

1. XLA options (`dssn_jax.runtime.xla_options.DEFAULT_FLAGS`): the float32
   matmul peak and each model's raw forward pass in a fresh process with and
   without them, alternated; model FLOP utilization = forward FLOP/s over
   the matmul's FLOP/s of the same trial.
2. Forward batch (`chunking.default_forward_batch`): each model's raw forward
   throughput per batch size, under the default options, interleaved rounds.
3. bfloat16: forward passes per second in bfloat16 over float32, same
   batch, interleaved rounds (worth offering where the CPU has native
   bfloat16 instructions, AVX512_BF16 or AMX).

Writes `cpu_defaults.json` to --outdir and prints a summary; each figure
comes with the load average during its measurement.
"""

from __future__ import annotations

import functools
import json
import os

from absl import app
from absl import flags

_OUTDIR = flags.DEFINE_string("outdir", "runs/cpu_defaults", "Output dir.")
_PARTS = flags.DEFINE_list(
    "parts", ["flags", "sweep", "bfloat16"], "Which measurements to run."
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds.")

FLAG_MODELS = (("small_cnn", 512), ("wrn_40_2", 64), ("resnet50", 8))
SWEEP = {
    "small_cnn": (64, 128, 256, 512, 1024),
    "wrn_40_2": (16, 32, 64, 128, 256, 512),
    "resnet50": (4, 8, 16, 32),
}
BFLOAT16_MODELS = (("small_cnn", 256), ("wrn_40_2", 64), ("resnet50", 8))


def bfloat16_ratio(name: str, batch: int, repeats: int):
  """Median over rounds of bfloat16 / float32 forward passes per second."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from benchmarks import measure  # pylint: disable=g-import-not-at-top

  fns = {}
  for dtype in ("float32", "bfloat16"):
    subject = measure.make_subject(name, dtype)
    x = jnp.asarray(measure.grid_images(subject.input_shape, batch, seed=2))
    forward = jax.jit(subject.apply_fn).lower(subject.variables, x).compile()
    fns[dtype] = functools.partial(forward, subject.variables, x)
  seconds = measure.timed_rounds(fns, repeats=repeats, warmup=1)
  ratios = [f / b for f, b in zip(seconds["float32"], seconds["bfloat16"])]
  return {
      "model": name,
      "batch": batch,
      "float32_forward_per_s": float(batch / np.median(seconds["float32"])),
      "bfloat16_forward_per_s": float(batch / np.median(seconds["bfloat16"])),
      "ratio": float(np.median(ratios)),
      "ratios": ratios,
      "load": measure.load_average(),
  }


def main(argv):
  del argv
  from benchmarks import measure  # pylint: disable=g-import-not-at-top
  from benchmarks import tuning  # pylint: disable=g-import-not-at-top
  from dssn_jax.runtime import xla_options  # pylint: disable=g-import-not-at-top

  os.makedirs(_OUTDIR.value, exist_ok=True)
  path = os.path.join(_OUTDIR.value, "cpu_defaults.json")
  report = {
      "environment": measure.environment(),
      "computation": xla_options.computation_record("float32"),
  }

  def save():
    with open(path, "w") as f:
      json.dump(report, f, indent=2)

  if "flags" in _PARTS.value:
    trials = tuning.xla_flag_trials(
        ("", " ".join(xla_options.DEFAULT_FLAGS)),
        FLAG_MODELS,
        alternations=2,
        peak_size=2048,
        repeats=_REPEATS.value,
    )
    for entry in trials["settings"]:
      rates = entry.get("flops_per_second", {})
      if "peak" in rates:
        entry["utilization"] = {
            k: v["median"] / rates["peak"]["median"]
            for k, v in rates.items()
            if k != "peak"
        }
      print(
          f"XLA_FLAGS={entry['flags'] or '(none)'}: "
          f"ratio {entry.get('ratio_to_baseline')}, utilization "
          f"{entry.get('utilization')}"
      )
    report["flag_trials"] = trials
    report["flag_trials_load"] = measure.load_average()
    save()
  if "sweep" in _PARTS.value:
    report["sweep"] = []
    for name, batches in SWEEP.items():
      sweep = tuning.forward_batch_sweep(
          name, batches, repeats=_REPEATS.value, warmup=1, peak_size=2048
      )
      sweep["load"] = measure.load_average()
      report["sweep"].append(sweep)
      print(
          name,
          [
              (r["batch"], round(r["fraction_of_best"], 3))
              for r in sweep["batches"]
          ],
          sweep["load"],
      )
      save()
  if "bfloat16" in _PARTS.value:
    report["bfloat16"] = []
    for name, batch in BFLOAT16_MODELS:
      row = bfloat16_ratio(name, batch, _REPEATS.value)
      report["bfloat16"].append(row)
      print(
          f"{name} batch {batch}: bfloat16/float32 {row['ratio']:.2f}x "
          f"(load {row['load']})"
      )
      save()
  save()


if __name__ == "__main__":
  app.run(main)
