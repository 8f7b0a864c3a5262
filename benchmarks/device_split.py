r"""How the certifier's work splits over a mesh of fake CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
      python -m benchmarks.device_split 4 small_cnn 0.12 8

`certifier.device_split_report` starts this module in a fresh process (the
device count is fixed when JAX starts). For a batch at least as large as the
device count (the batch is split) and for a single input (the noise samples
are split), it compiles the sharded vote program and a one-device program,
reads from the partitioned HLO the per-device input batches and forward
passes, checks that the sharded counts equal the one-device counts, and
prints one JSON line.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import jax
import numpy as np

from benchmarks import measure
from dssn_jax.core import dssn
from dssn_jax.core import placement
from dssn_jax.core import smoothing


def _forwards(text: str, dims: str) -> int:
  """Noisy inputs per forward pass times the trips of the scan over chunks,
  from the HLO (XLA's cost analysis counts a loop body once)."""
  batches = [int(n) for n in re.findall(rf"f32\[(\d+),{dims}\]", text)]
  trips = [
      int(n) for n in re.findall(r'"known_trip_count":\{"n":"(\d+)"', text)
  ] or [1]
  return max(batches) * max(trips)


def split_report(
    devices: int, name: str, sigma: float, batch: int
) -> dict[str, Any]:
  """The work split of `dssn_counts` over this process's `devices` devices."""
  if jax.device_count() != devices:
    raise ValueError(
        f"expected {devices} devices, JAX sees "
        f"{jax.device_count()}: set XLA_FLAGS="
        f"--xla_force_host_platform_device_count={devices}."
    )
  subject = measure.make_subject(name)
  spec = smoothing.SmoothingSpec(sigma)
  v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  x = measure.grid_images(subject.input_shape, batch)
  report: dict[str, Any] = {
      "devices": devices,
      "model": name,
      "levels": spec.levels,
      "cases": [],
  }
  dims = ",".join(str(n) for n in subject.input_shape)

  def program(rows, mesh, chunk):
    lowered = dssn.lower_counts(
        subject.apply_fn,
        x[:rows],
        v,
        spec,
        params=subject.variables,
        chunk_size=chunk,
        mesh=mesh,
    )
    return lowered.compile()

  for rows in (batch, 1):
    reference = np.asarray(
        dssn.dssn_counts(
            subject.apply_fn, x[:rows], v, spec, params=subject.variables
        )
    )
    mesh = placement.make_mesh()
    counts = np.asarray(
        dssn.dssn_counts(
            subject.apply_fn,
            x[:rows],
            v,
            spec,
            params=subject.variables,
            mesh=mesh,
        )
    )
    chunk = measure.auto_chunk(subject, rows, spec.levels, devices)
    one_chunk = measure.auto_chunk(subject, rows, spec.levels, 1)
    text = program(rows, mesh, chunk).as_text()
    # Leading dimensions of the input-shaped arrays of the partitioned
    # (per-device) program: the device's rows and its noisy forward batch.
    input_batches = sorted(
        {int(n) for n in re.findall(rf"f32\[(\d+),{dims}\]", text)}
    )
    per_device = _forwards(text, dims)
    one_device = _forwards(program(rows, None, one_chunk).as_text(), dims)
    report["cases"].append(
        {
            "batch": rows,
            "split": "batch" if rows >= devices else "noise samples",
            "chunk_per_device": chunk,
            "per_device_input_batches": input_batches,
            "forwards_per_device": per_device,
            "forwards_one_device": one_device,
            "per_device_share": per_device / one_device,
            "identical_to_one_device": bool(np.array_equal(counts, reference)),
            "row_sums": sorted(set(counts.sum(1).tolist())),
        }
    )
  return report


def main(argv: list[str]) -> None:
  if len(argv) != 5:
    sys.exit(
        "usage: python -m benchmarks.device_split DEVICES MODEL SIGMA " "BATCH"
    )
  print(
      json.dumps(
          split_report(int(argv[1]), argv[2], float(argv[3]), int(argv[4]))
      )
  )


if __name__ == "__main__":
  main(sys.argv)
