"""Timing, statistics and test subjects shared by the benchmarks.

Timing protocol. Every timed callable is compiled and run `warmup` times
first. Then, in each of `repeats` rounds, every callable of a group runs once,
back to back (`timed_rounds`). Ratios are taken within a round and their
median is reported, so load from other processes that drifts during the run
affects numerator and denominator alike. Every figure is reported as the
median with min and max over the rounds (`summarize`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import glob
import os
import platform
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dssn_jax import models
from dssn_jax.core import chunking
from dssn_jax.data import datasets

# ----------------------------------------------------------------------------
# Timing and statistics.
# ----------------------------------------------------------------------------


def summarize(samples: Sequence[float]) -> dict[str, float]:
  """Median, min, max and relative spread (max - min) / median of samples."""
  values = np.asarray(samples, np.float64)
  median = float(np.median(values))
  return {
      "median": median,
      "min": float(values.min()),
      "max": float(values.max()),
      "spread": (
          float((values.max() - values.min()) / median) if median else 0.0
      ),
      "n": int(values.size),
  }


def timed_rounds(
    fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int
) -> dict[str, list[float]]:
  """Seconds per call of each fn, interleaved: one call of each per round.

  Args:
    fns: name -> callable returning JAX arrays (waited for with
      `jax.block_until_ready`).
    repeats: timed rounds.
    warmup: untimed calls of each fn before the first round (compilation and
      first-touch of memory happen here).

  Returns:
    name -> list of `repeats` wall-clock seconds.
  """
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  seconds = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      seconds[name].append(time.perf_counter() - start)
  return seconds


def per_round(
    numerators: Sequence[float], denominators: Sequence[float]
) -> dict[str, float]:
  """Statistics of the per-round ratios numerator / denominator."""
  return summarize([a / b for a, b in zip(numerators, denominators)])


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _proc_status(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def peak_rss_bytes() -> int | None:
  """Peak resident set size of this process since the last reset (Linux)."""
  return _proc_status("VmHWM")


def compiled_costs(compiled) -> dict[str, float | None]:
  """FLOPs, bytes accessed and memory of a compiled XLA executable."""
  out = {
      "flops": None,
      "bytes_accessed": None,
      "temp_bytes": None,
      "argument_bytes": None,
      "output_bytes": None,
      "alias_bytes": None,
  }
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
      cost = cost[0]
    out["flops"] = float(cost.get("flops", 0.0))
    out["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
  except Exception:  # pylint: disable=broad-except
    pass  # Not every backend implements cost analysis.
  try:
    memory = compiled.memory_analysis()
    out["temp_bytes"] = int(memory.temp_size_in_bytes)
    out["argument_bytes"] = int(memory.argument_size_in_bytes)
    out["output_bytes"] = int(memory.output_size_in_bytes)
    out["alias_bytes"] = int(memory.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  return out


def footprint_bytes(costs: Mapping[str, Any]) -> int | None:
  """Bytes XLA holds during a program (`compiled_costs`): arguments + outputs
  + temporaries, minus the outputs that alias (reuse) donated arguments;
  None where the backend has no memory analysis."""
  if costs.get("temp_bytes") is None:
    return None
  return (
      costs["argument_bytes"]
      + costs["output_bytes"]
      + costs["temp_bytes"]
      - (costs["alias_bytes"] or 0)
  )


# Runtime events that wait rather than compute.
_PROFILE_WAITS = ("ThunkExecutor::Execute", "SlinkyThreadPool::Await", "end: ")


def profile_breakdown(
    fn: Callable[[], Any], trace_dir: str, top: int = 12
) -> dict[str, Any]:
  """Where one call of fn spends its time, from a `jax.profiler` trace.

  Sums the exclusive time of each XLA operation (thunk) over the runtime's
  threads (names without their `.N` suffix, so all library fusions of one
  kind add up) and returns the largest shares. The trace stays in trace_dir
  for TensorBoard or Perfetto.
  """
  jax.block_until_ready(fn())
  jax.profiler.start_trace(trace_dir)
  try:
    jax.block_until_ready(fn())
  finally:
    jax.profiler.stop_trace()
  paths = sorted(
      glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
      key=os.path.getmtime,
  )
  if not paths:
    return {"error": "no trace written"}
  profile = jax.profiler.ProfileData.from_file(paths[-1])
  exclusive: dict[str, float] = {}
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue  # The Python thread waits; XLA's threads do the work.
      events = sorted(
          (
              (e.start_ns, e.duration_ns, e.name)
              for e in line.events
              if not e.name.startswith(_PROFILE_WAITS)
          ),
          key=lambda e: (e[0], -e[1]),
      )
      stack: list[list[Any]] = []  # [end_ns, name, exclusive_ns]
      for start, duration, name in events:
        while stack and stack[-1][0] <= start:
          end, done, own = stack.pop()
          exclusive[done] = exclusive.get(done, 0.0) + own
        if stack:
          stack[-1][2] -= duration
        stack.append([start + duration, re.sub(r"\.\d+$", "", name), duration])
      for _, done, own in stack:
        exclusive[done] = exclusive.get(done, 0.0) + own
  total = sum(exclusive.values()) or 1.0
  ranked = sorted(exclusive.items(), key=lambda kv: -kv[1])[:top]
  return {
      "trace_dir": trace_dir,
      "thread_seconds": total / 1e9,
      "top": [
          {"op": name, "seconds": ns / 1e9, "share": ns / total}
          for name, ns in ranked
      ],
  }


# ----------------------------------------------------------------------------
# The measured peak.
# ----------------------------------------------------------------------------


def matmul(size: int, dtype) -> tuple[Callable[[], jax.Array], float]:
  """A compiled (size, size) @ (size, size) product and its FLOP count."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  a = a.astype(dtype)
  b = (a.T * 0.5).astype(dtype)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  return functools.partial(compiled, a, b), 2.0 * size**3


def measure_peak(
    sizes: Sequence[int], dtypes: Sequence[str], *, repeats: int, warmup: int
) -> list[dict[str, Any]]:
  """FLOP/s of square matrix products of each size and dtype, interleaved
  (one product of each per round), so that they see the same load."""
  rows, fns, flops = [], {}, {}
  for dtype in dtypes:
    for size in sizes:
      try:
        fn, count = matmul(size, jnp.dtype(dtype))
        jax.block_until_ready(fn())
      except Exception as e:  # pylint: disable=broad-except
        rows.append(
            {
                "dtype": dtype,
                "size": size,
                "supported": False,
                "error": f"{type(e).__name__}: {e}"[:300],
            }
        )
        continue
      fns[(dtype, size)], flops[(dtype, size)] = fn, count
  seconds = timed_rounds(fns, repeats=repeats, warmup=warmup)
  for (dtype, size), times in seconds.items():
    count = flops[(dtype, size)]
    rows.append(
        {
            "dtype": dtype,
            "size": size,
            "supported": True,
            "flops": count,
            "flops_per_second": summarize([count / s for s in times]),
        }
    )
  return rows


# ----------------------------------------------------------------------------
# Models.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Subject:
  """A base classifier under test: `apply_fn(variables, batch) -> logits`."""

  name: str
  compute_dtype: str
  input_shape: tuple[int, ...]
  num_classes: int
  model: Any
  variables: Any
  apply_fn: Callable[..., jax.Array]


def make_subject(
    name: str, compute_dtype: str = "float32", seed: int = 0
) -> Subject:
  """The named model with freshly initialized variables (eval mode)."""
  info = datasets.dataset_info(datasets.MODEL_DATASETS[name])
  model = models.create_model(
      name,
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
      dtype=jnp.dtype(compute_dtype),
  )
  variables = jax.jit(model.init)(
      jax.random.key(seed), jnp.zeros((1,) + info.input_shape)
  )

  def apply_fn(variables, batch):
    return model.apply(variables, batch, train=False)

  return Subject(
      name,
      compute_dtype,
      tuple(info.input_shape),
      info.num_classes,
      model,
      variables,
      apply_fn,
  )


def grid_images(
    shape: Sequence[int], batch: int, seed: int = 1, q: int = 255
) -> np.ndarray:
  """Random images on the 1/q grid, float32 (batch, *shape)."""
  rng = np.random.RandomState(seed)
  return (rng.randint(0, q + 1, (batch,) + tuple(shape)) / q).astype(np.float32)


def environment() -> dict[str, Any]:
  device = jax.devices()[0]
  return {
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "jax_version": jax.__version__,
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "processor": _cpu_model(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "python": platform.python_version(),
  }


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def auto_chunk(
    subject: Subject, images: int, levels: int, devices: int = 1
) -> int:
  """The chunk size `dssn_counts` picks for this subject when none is given."""
  return chunking.auto_chunk_size(
      subject.apply_fn,
      subject.variables,
      subject.input_shape,
      images,
      levels,
      devices=devices,
  )
