r"""One XLA_FLAGS trial, in the fresh process `tuning.xla_flag_trials` starts.

  XLA_FLAGS=... python -m benchmarks.flag_trial '{"flags": "...",
      "models": [["small_cnn", 64]], "peak_size": 1024, "repeats": 3}'

XLA reads its options once per process, so each setting gets its own
interpreter. Times the float32 matmul peak and the raw jitted forward pass of
each (model, batch), interleaved, and prints one JSON line: the median FLOP/s
of each, the FLOPs per forward pass, and the first logit of a fixed batch
(options that change it change the classifier that gets certified).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import measure


def run_trial(args: dict[str, Any]) -> dict[str, Any]:
  """The measurement of one trial under the process's XLA_FLAGS."""
  fns, work = {}, {}
  fns["peak"], work["peak"] = measure.matmul(args["peak_size"], jnp.float32)
  out: dict[str, Any] = {
      "flags": args["flags"],
      "logits": {},
      "forward_flops": {},
  }
  for name, batch in args["models"]:
    subject = measure.make_subject(name)
    x = jnp.asarray(measure.grid_images(subject.input_shape, batch, seed=2))
    forward = jax.jit(subject.apply_fn).lower(subject.variables, x).compile()
    flops = measure.compiled_costs(forward)["flops"] or 0.0
    fns[name] = lambda f=forward, s=subject, x=x: f(s.variables, x)
    work[name] = flops
    out["logits"][name] = float(forward(subject.variables, x)[0, 0])
    out["forward_flops"][name] = flops / batch
  seconds = measure.timed_rounds(fns, repeats=args["repeats"], warmup=1)
  out["flops_per_second"] = {
      name: sorted(work[name] / t for t in times)[len(times) // 2]
      for name, times in seconds.items()
  }
  return out


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    sys.exit(
        f"usage: python -m benchmarks.flag_trial '<json>' (got "
        f"{len(argv) - 1} arguments)"
    )
  print(json.dumps(run_trial(json.loads(argv[1]))))


if __name__ == "__main__":
  main(sys.argv)
