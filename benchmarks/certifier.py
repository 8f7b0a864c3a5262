"""Throughput of the certifier measured against the machine's own limits.

`run_benchmark(config, workdir)` measures, in one process on the current
backend, and writes `benchmark.json` and `benchmark.md` into workdir (after
every section, so a long run leaves partial results):

- peak: FLOP/s of a large jitted matrix product, float32 and bfloat16;
- per model and compute dtype: FLOPs per forward pass (XLA cost analysis of
  the compiled forward), raw jitted forward throughput at the certification
  forward batch, certification throughput of the vote-counting program of
  `dssn_counts` at each sigma, its ratio to the raw forward, model FLOP
  utilization (achieved model FLOP/s over the matmul peak) and peak memory
  (XLA's memory analysis of the whole certification program compiled at the
  full L: temporaries + arguments + outputs; and the process's peak resident
  memory so far);
- training step throughput (images/s) per model;
- optionally, on fake CPU devices in a subprocess, how the work splits over a
  mesh (per-device shapes in the partitioned HLO) and that counts are equal.

Timing protocol. Every timed callable is compiled and run `warmup` times
first. Then, in each of `repeats` rounds, every callable of a group (e.g. the
matmul peak, the raw forward and the certification program at each sigma)
runs once, back to back. Ratios (certification/raw, utilization) are taken
within a round and their median is reported, so load from other processes
that drifts during the run affects numerator and denominator alike. Every
figure is reported as the median with min and max over the rounds.

What the certification time covers. The certification program is exactly the
jitted computation that `dssn_counts` runs (`certify._vote_counts` with the
same noise, chunk size and batch), but over a prefix k = 0..n-1 of the L
noise samples, with n = `timed_chunks` full chunks, because one ResNet-50
image at sigma = 3.5 is 3,091 forward passes. The lax.scan body is the same
for every chunk, so the full certification of an image takes
ceil(L / chunk) * chunk forward passes at the timed rate (the last chunk is
padded; its extra samples are evaluated but not counted), and "forward
passes per second" counts only the L useful ones. For the configs listed in
`end_to_end`, full `dssn_counts` calls (all L samples, host-side input
checks included) are also timed to check that extrapolation.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import platform
import re
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dssn_jax import certify
from dssn_jax import input_pipeline
from dssn_jax import models
from dssn_jax import smoothing
from dssn_jax import train
from benchmarks import tuning

RESULTS_JSON = "benchmark.json"
RESULTS_MARKDOWN = "benchmark.md"
# The dataset whose input shape, classes and normalization each model uses.
MODEL_DATASETS = {"small_cnn": "fashion_mnist", "wrn_40_2": "cifar10",
                  "resnet110": "cifar10", "resnet50": "imagenet2012"}


# ----------------------------------------------------------------------------
# Timing and statistics.
# ----------------------------------------------------------------------------


def summarize(samples: Sequence[float]) -> dict[str, float]:
  """Median, min, max and relative spread (max - min) / median of samples."""
  values = np.asarray(samples, np.float64)
  median = float(np.median(values))
  return {"median": median, "min": float(values.min()),
          "max": float(values.max()),
          "spread": float((values.max() - values.min()) / median)
                    if median else 0.0,
          "n": int(values.size)}


def timed_rounds(fns: Mapping[str, Callable[[], Any]], *, repeats: int,
                 warmup: int) -> dict[str, list[float]]:
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


def per_round(numerators: Sequence[float],
              denominators: Sequence[float]) -> dict[str, float]:
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
  out = {"flops": None, "bytes_accessed": None, "temp_bytes": None,
         "argument_bytes": None, "output_bytes": None, "alias_bytes": None}
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


# Runtime events that wait rather than compute.
_PROFILE_WAITS = ("ThunkExecutor::Execute", "SlinkyThreadPool::Await", "end: ")


def profile_breakdown(fn: Callable[[], Any], trace_dir: str,
                      top: int = 12) -> dict[str, Any]:
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
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    return {"error": "no trace written"}
  profile = jax.profiler.ProfileData.from_file(paths[-1])
  exclusive: dict[str, float] = {}
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue  # The Python thread waits; XLA's threads do the work.
      events = sorted(((e.start_ns, e.duration_ns, e.name)
                       for e in line.events
                       if not e.name.startswith(_PROFILE_WAITS)),
                      key=lambda e: (e[0], -e[1]))
      stack: list[list[Any]] = []  # [end_ns, name, exclusive_ns]
      for start, duration, name in events:
        while stack and stack[-1][0] <= start:
          end, done, own = stack.pop()
          exclusive[done] = exclusive.get(done, 0.0) + own
        if stack:
          stack[-1][2] -= duration
        stack.append([start + duration, re.sub(r"\.\d+$", "", name),
                      duration])
      for _, done, own in stack:
        exclusive[done] = exclusive.get(done, 0.0) + own
  total = sum(exclusive.values()) or 1.0
  ranked = sorted(exclusive.items(), key=lambda kv: -kv[1])[:top]
  return {"trace_dir": trace_dir, "thread_seconds": total / 1e9,
          "top": [{"op": name, "seconds": ns / 1e9, "share": ns / total}
                  for name, ns in ranked]}


# ----------------------------------------------------------------------------
# The measured peak.
# ----------------------------------------------------------------------------


def matmul(size: int, dtype) -> tuple[Callable[[], jax.Array], float]:
  """A compiled (size, size) @ (size, size) product and its FLOP count."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  a = a.astype(dtype)
  b = (a.T * 0.5).astype(dtype)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  return functools.partial(compiled, a, b), 2.0 * size ** 3


def measure_peak(sizes: Sequence[int], dtypes: Sequence[str], *,
                 repeats: int, warmup: int) -> list[dict[str, Any]]:
  """FLOP/s of square matrix products of each size and dtype, interleaved
  (one product of each per round), so that they see the same load."""
  rows, fns, flops = [], {}, {}
  for dtype in dtypes:
    for size in sizes:
      try:
        fn, count = matmul(size, jnp.dtype(dtype))
        jax.block_until_ready(fn())
      except Exception as e:  # pylint: disable=broad-except
        rows.append({"dtype": dtype, "size": size, "supported": False,
                     "error": f"{type(e).__name__}: {e}"[:300]})
        continue
      fns[(dtype, size)], flops[(dtype, size)] = fn, count
  seconds = timed_rounds(fns, repeats=repeats, warmup=warmup)
  for (dtype, size), times in seconds.items():
    count = flops[(dtype, size)]
    rows.append({"dtype": dtype, "size": size, "supported": True,
                 "flops": count,
                 "flops_per_second": summarize([count / s for s in times])})
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


def make_subject(name: str, compute_dtype: str = "float32",
                 seed: int = 0) -> Subject:
  """The named model with freshly initialized variables (eval mode)."""
  info = input_pipeline.dataset_info(MODEL_DATASETS[name])
  model = models.create_model(name, num_classes=info.num_classes,
                              mean=info.mean, std=info.std,
                              dtype=jnp.dtype(compute_dtype))
  variables = jax.jit(model.init)(jax.random.key(seed),
                                  jnp.zeros((1,) + info.input_shape))

  def apply_fn(variables, batch):
    return model.apply(variables, batch, train=False)

  return Subject(name, compute_dtype, tuple(info.input_shape),
                 info.num_classes, model, variables, apply_fn)


def grid_images(shape: Sequence[int], batch: int, seed: int = 1,
                q: int = 255) -> np.ndarray:
  """Random images on the 1/q grid, float32 (batch, *shape)."""
  rng = np.random.RandomState(seed)
  return (rng.randint(0, q + 1, (batch,) + tuple(shape)) / q).astype(
      np.float32)


def _auto_chunk(subject: Subject, images: int, levels: int,
                devices: int = 1) -> int:
  """The chunk size `dssn_counts` picks when none is given."""
  if hasattr(certify, "auto_chunk_size"):
    return certify.auto_chunk_size(subject.apply_fn, subject.variables,
                                   subject.input_shape, images, levels,
                                   devices=devices)
  per_device = math.ceil(images / devices) if images >= devices else images
  items = levels if images >= devices else math.ceil(levels / devices)
  return min(certify.default_chunk_size(per_device, items), items)


def evaluated_items(levels: int, chunk: int) -> int:
  """Noise samples the vote program evaluates per input for L = levels: the
  last chunk is padded to the full chunk size (its extra samples are not
  counted) so that the program holds one copy of the forward pass."""
  if hasattr(certify, "auto_chunk_size"):
    return math.ceil(levels / chunk) * chunk
  return levels  # Versions before auto_chunk_size peeled the remainder.


def certification_program(subject: Subject, x, spec: smoothing.SmoothingSpec,
                          *, chunk_size: int, num_items: int):
  """The compiled vote-counting program of `dssn_counts` over k < num_items.

  Returns:
    (run, compiled, compile_seconds): `run()` executes it on x; `compiled`
    is the executable (for cost and memory analysis).
  """
  v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  x = jnp.asarray(x)
  row_ids = jnp.zeros(x.shape[0], jnp.int32)
  start = time.perf_counter()
  compiled = certify._vote_counts.lower(  # pylint: disable=protected-access
      subject.variables, x, row_ids, v, apply_fn=subject.apply_fn,
      make_noisy=certify._dssn_sample(spec),  # pylint: disable=protected-access
      num_items=num_items, chunk_size=chunk_size, mesh=None).compile()
  compile_seconds = time.perf_counter() - start
  run = functools.partial(compiled, subject.variables, x, row_ids, v)
  return run, compiled, compile_seconds


def noise_fusion_report(compiled_text: str, spec: smoothing.SmoothingSpec,
                        images: int, input_shape: Sequence[int]) -> dict:
  """Checks the optimized HLO of a certification program: one loop, no
  buffer holding the noisy inputs of all L samples, and the noise kernel's
  integer `remainder` ops only inside fusions (computed on the fly where the
  noisy input is consumed, not in a separate pass over memory)."""
  all_noisy = f"[{spec.levels},{images}," + ",".join(
      str(n) for n in input_shape) + "]"
  fused, remainders, computation = set(), {}, None
  for line in compiled_text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      words = line.split()
      computation = (words[1] if words[0] == "ENTRY" else words[0]).lstrip("%")
    elif " fusion(" in line:
      called = re.search(r"calls=%?([\w.\-]+)", line)
      if called:
        fused.add(called.group(1))
    if " remainder(" in line:
      remainders[computation] = remainders.get(computation, 0) + 1
  return {"while_loops": compiled_text.count(" while("),
          "buffer_of_all_L_noisy_inputs": all_noisy in compiled_text,
          "noise_ops_in_fusions": sum(n for c, n in remainders.items()
                                      if c in fused),
          "noise_ops_outside_fusions": sum(n for c, n in remainders.items()
                                           if c not in fused)}


# ----------------------------------------------------------------------------
# Sections.
# ----------------------------------------------------------------------------


def _setting(config, name: str, field: str):
  settings = config.model_settings.get(name)
  if settings is not None and field in settings:
    value = settings[field]
    if not (isinstance(value, int) and value < 0):
      return value
  return config[field]


def benchmark_model(config, name: str, compute_dtype: str,
                    log: Callable[[str], None] = print,
                    profile_dir: str | None = None) -> dict[str, Any]:
  """Forward, certification and memory figures of one model and dtype.

  With profile_dir, one call of the certification program at the first
  sigma is also traced there and broken down by XLA operation.
  """
  repeats = _setting(config, name, "repeats")
  warmup = config.warmup
  images = _setting(config, name, "images")
  subject = make_subject(name, compute_dtype)
  specs = [smoothing.SmoothingSpec(s, config.q) for s in config.sigmas]
  row = {"model": name, "compute_dtype": compute_dtype,
         "input_shape": list(subject.input_shape), "images": images,
         "sigmas": {}}

  x = grid_images(subject.input_shape, images)
  chunk_override = _setting(config, name, "chunk_size")
  # The chunk dssn_counts would pick for this batch (per sigma), and the one
  # timed (a config override, e.g. to keep ResNet-50 short on a CPU).
  chunks, auto = {}, {}
  for spec in specs:
    auto[spec.sigma] = _auto_chunk(subject, images, spec.levels)
    if chunk_override and chunk_override > 0:
      chunks[spec.sigma] = min(chunk_override, spec.levels)
    else:
      chunks[spec.sigma] = auto[spec.sigma]
  row["auto_chunk_size"] = {str(k): c for k, c in auto.items()}
  row["chunk_size_overridden"] = bool(chunk_override and chunk_override > 0)
  if hasattr(certify, "device_memory_budget"):
    row["memory_budget_bytes"] = certify.device_memory_budget()
  forward_batch = max(chunks.values()) * images
  row["forward_batch"] = forward_batch

  # Raw forward at the certification forward batch.
  batch = jnp.asarray(grid_images(subject.input_shape, forward_batch, seed=2))
  forward = jax.jit(subject.apply_fn).lower(subject.variables, batch).compile()
  forward_costs = compiled_costs(forward)
  row["forward"] = forward_costs
  flops_per_forward = (forward_costs["flops"] or 0.0) / forward_batch
  row["flops_per_forward"] = flops_per_forward
  fns = {"peak": matmul(config.peak_size, jnp.float32)[0],
         "raw": functools.partial(forward, subject.variables, batch)}
  peak_flops = 2.0 * config.peak_size ** 3

  programs = {}
  for spec in specs:
    chunk = chunks[spec.sigma]
    num_items = min(spec.levels, _setting(config, name, "timed_chunks") *
                    chunk)
    run, compiled, _ = certification_program(
        subject, x, spec, chunk_size=chunk, num_items=num_items)
    programs[spec.sigma] = (run, compiled, num_items, chunk)
    fns[f"cert_{spec.sigma}"] = run

  log(f"  {name} {compute_dtype}: timing (forward batch {forward_batch}, "
      f"{repeats} rounds)")
  seconds = timed_rounds(fns, repeats=repeats, warmup=warmup)
  raw_rate = [forward_batch / s for s in seconds["raw"]]
  peak_rate = [peak_flops / s for s in seconds["peak"]]
  row["peak_flops_per_second"] = summarize(peak_rate)
  row["raw_forwards_per_second"] = summarize(raw_rate)
  row["raw_flops_per_second"] = summarize(
      [r * flops_per_forward for r in raw_rate])
  row["raw_utilization"] = per_round(
      [r * flops_per_forward for r in raw_rate], peak_rate)

  for spec in specs:
    run, compiled, num_items, chunk = programs[spec.sigma]
    evaluated = evaluated_items(spec.levels, chunk)
    timed_rate = [images * num_items / s
                  for s in seconds[f"cert_{spec.sigma}"]]
    # Useful forward passes per second over the whole certification: the
    # padding of the last chunk is evaluated but does not count.
    rate = [r * spec.levels / evaluated for r in timed_rate]
    entry = {
        "levels": spec.levels, "chunk_size": chunk,
        "timed_items": num_items,
        "timed_forwards": images * num_items,
        "evaluated_items": evaluated,
        "timed_forwards_per_second": summarize(timed_rate),
        "forwards_per_second": summarize(rate),
        "seconds_per_image": summarize([spec.levels / r for r in rate]),
        "ratio_to_raw": per_round(rate, raw_rate),
        "utilization": per_round([r * flops_per_forward for r in rate],
                                 peak_rate),
        "timed_program": compiled_costs(compiled),
    }
    # Memory of the whole certification program at the full L (compiled,
    # not run): XLA's temporaries, arguments and outputs.
    _, full, compile_seconds = certification_program(
        subject, x, spec, chunk_size=chunk, num_items=spec.levels)
    full_costs = compiled_costs(full)
    entry["full_program"] = full_costs
    entry["full_program_compile_seconds"] = compile_seconds
    entry["peak_bytes"] = _footprint(full_costs)
    entry["noise_fusion"] = noise_fusion_report(
        full.as_text(), spec, images, subject.input_shape)
    row["sigmas"][str(spec.sigma)] = entry
  if profile_dir:
    row["profile"] = profile_breakdown(
        programs[specs[0].sigma][0],
        os.path.join(profile_dir, f"{name}_{compute_dtype}"))
  peaks = [e["peak_bytes"] for e in row["sigmas"].values()]
  row["peak_bytes_ratio_max_min"] = (
      max(peaks) / max(1, min(peaks)) if None not in peaks else None)
  row["process_peak_rss_bytes"] = peak_rss_bytes()

  if f"{name}:{compute_dtype}" in config.end_to_end:
    row["end_to_end"] = _end_to_end(subject, x, specs[0],
                                    repeats=config.end_to_end_repeats)
  # Host work per dssn_counts call, at a small L (the host's share of the
  # call does not depend on L).
  row["host_overhead"] = _end_to_end(
      subject, x, smoothing.SmoothingSpec(config.host_sigma, config.q),
      repeats=config.end_to_end_repeats)
  return row


def _end_to_end(subject: Subject, x, spec, *, repeats: int) -> dict:
  """Full `dssn_counts` calls (all L samples, host checks included).

  Also times how long the call takes to return before its result is ready:
  the host-side work (input checks, dispatch); the rest runs on the device
  without the host.
  """
  v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  call = lambda: certify.dssn_counts(subject.apply_fn, x, v, spec,
                                     params=subject.variables)
  jax.block_until_ready(call())  # Compile.
  total, host = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    counts = call()
    host.append(time.perf_counter() - start)
    jax.block_until_ready(counts)
    total.append(time.perf_counter() - start)
  return {"sigma": spec.sigma, "levels": spec.levels,
          "images": int(x.shape[0]),
          "seconds_per_call": summarize(total),
          "host_seconds_per_call": summarize(host),
          "seconds_per_image": summarize([s / x.shape[0] for s in total])}


def benchmark_training(config, name: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
  """Images/s of the jitted training step (DSSN noise, donated state)."""
  repeats = _setting(config, name, "repeats")
  batch_size = _setting(config, name, "train_batch")
  subject = make_subject(name, "float32")
  train_config = config.train.copy_and_resolve_references()
  spec = smoothing.SmoothingSpec(train_config.sigma, train_config.q)
  offsets = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  step = jax.jit(train.make_train_step(subject.model, train_config, spec,
                                       offsets), donate_argnums=0)
  state = train.TrainState.create(
      apply_fn=subject.model.apply, params=subject.variables["params"],
      batch_stats=subject.variables.get("batch_stats", {}),
      tx=train.create_optimizer(train_config, 1000))
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randint(0, 256, (batch_size,) +
                                            subject.input_shape, np.uint8)),
           "label": jnp.asarray(rng.randint(0, subject.num_classes,
                                            (batch_size,)), jnp.int32)}
  key = jax.random.key(0)
  compiled = step.lower(state, batch, key).compile()
  costs = compiled_costs(compiled)
  # What donating the state saves: the same step compiled without donation.
  undonated = compiled_costs(jax.jit(train.make_train_step(
      subject.model, train_config, spec, offsets)).lower(
          state, batch, key).compile())
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch, key)
    return metrics

  fns = {"peak": matmul(config.peak_size, jnp.float32)[0], "train": run}
  log(f"  {name}: training step, batch {batch_size}, {repeats} rounds")
  seconds = timed_rounds(fns, repeats=repeats, warmup=config.warmup)
  peak_rate = [2.0 * config.peak_size ** 3 / s for s in seconds["peak"]]
  flops = costs["flops"] or 0.0
  return {"model": name, "batch": batch_size,
          "images_per_second": summarize([batch_size / s
                                          for s in seconds["train"]]),
          "flops_per_step": flops,
          "utilization": per_round([flops / s for s in seconds["train"]],
                                   peak_rate),
          "step_program": costs,
          "step_program_without_donation": undonated}


# ----------------------------------------------------------------------------
# Fake CPU devices: how the work splits over a mesh.
# ----------------------------------------------------------------------------

_SPLIT_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from benchmarks import certifier; from dssn_jax import certify, smoothing
    devices, name, sigma, batch = (int(sys.argv[1]), sys.argv[2],
                                   float(sys.argv[3]), int(sys.argv[4]))
    assert jax.device_count() == devices, jax.devices()
    subject = certifier.make_subject(name)
    spec = smoothing.SmoothingSpec(sigma)
    v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
    x = certifier.grid_images(subject.input_shape, batch)
    report = {"devices": devices, "model": name, "levels": spec.levels,
              "cases": []}
    dims = ",".join(str(n) for n in subject.input_shape)

    def program(rows, mesh, chunk):
      return certify._vote_counts.lower(
          subject.variables, jnp.asarray(x[:rows]),
          jnp.zeros(rows, jnp.int32), v, apply_fn=subject.apply_fn,
          make_noisy=certify._dssn_sample(spec), num_items=spec.levels,
          chunk_size=chunk, mesh=mesh).compile()

    for rows in (batch, 1):
      reference = np.asarray(certify.dssn_counts(
          subject.apply_fn, x[:rows], v, spec, params=subject.variables))
      mesh = certify.make_mesh()
      counts = np.asarray(certify.dssn_counts(
          subject.apply_fn, x[:rows], v, spec, params=subject.variables,
          mesh=mesh))
      chunk = certifier._auto_chunk(subject, rows, spec.levels, devices)
      one_chunk = certifier._auto_chunk(subject, rows, spec.levels, 1)
      sharded = program(rows, mesh, chunk)
      single = program(rows, None, one_chunk)
      text = sharded.as_text()
      # Leading dimensions of the input-shaped arrays of the partitioned
      # (per-device) program: the device's rows and its noisy forward batch.
      input_batches = sorted({int(n) for n in re.findall(
          r"f32\\[(\\d+),%s\\]" % dims, text)})
      def forwards(text):
        # Noisy inputs per forward pass x trips of the scan over chunks
        # (XLA's cost analysis counts a loop body once, so count from HLO).
        batches = [int(n) for n in re.findall(r"f32\\[(\\d+),%s\\]" % dims,
                                              text)]
        trips = [int(n) for n in re.findall(
            r'"known_trip_count":\\{"n":"(\\d+)"', text)] or [1]
        return max(batches) * max(trips)
      per_device = forwards(text)
      one_device = forwards(single.as_text())
      report["cases"].append({
          "batch": rows,
          "split": "batch" if rows >= devices else "noise samples",
          "chunk_per_device": chunk,
          "per_device_input_batches": input_batches,
          "forwards_per_device": per_device,
          "forwards_one_device": one_device,
          "per_device_share": per_device / one_device,
          "identical_to_one_device": bool(np.array_equal(counts, reference)),
          "row_sums": sorted(set(counts.sum(1).tolist())),
      })
    print(json.dumps(report))
""")



def device_split_report(num_devices: int, *, model: str = "small_cnn",
                        sigma: float = 0.12, batch: int = 8,
                        timeout: float = 900) -> dict[str, Any]:
  """Runs dssn_counts on `num_devices` fake CPU devices in a subprocess."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={num_devices}")
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run(
      [sys.executable, "-c", _SPLIT_SCRIPT, str(num_devices), model,
       str(sigma), str(batch)], env=env, capture_output=True, text=True,
      timeout=timeout, check=False)
  if result.returncode:
    return {"devices": num_devices, "error": result.stderr[-2000:]}
  return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# The whole run.
# ----------------------------------------------------------------------------


def environment() -> dict[str, Any]:
  device = jax.devices()[0]
  return {"backend": jax.default_backend(),
          "device_kind": device.device_kind,
          "device_count": jax.device_count(),
          "jax_version": jax.__version__,
          "cpu_count": os.cpu_count(),
          "machine": platform.machine(),
          "processor": _cpu_model(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "python": platform.python_version()}


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def bfloat16_supported() -> bool:
  """Whether the backend compiles and runs a bfloat16 convolution."""
  try:
    x = jnp.ones((1, 8, 8, 4), jnp.bfloat16)
    w = jnp.ones((3, 3, 4, 4), jnp.bfloat16)
    out = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO",
                                                          "NHWC"))
    return bool(jnp.isfinite(out.astype(jnp.float32)).all())
  except Exception:  # pylint: disable=broad-except
    return False


def run_benchmark(config, workdir: str,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs every section of the config; writes JSON and Markdown to workdir."""
  os.makedirs(workdir, exist_ok=True)
  started = time.time()
  report: dict[str, Any] = {"environment": environment(),
                            "config": config.to_dict(),
                            "load_average_start": load_average(),
                            "peak": [], "models": [], "training": [],
                            "device_split": []}

  def save():
    report["load_average_now"] = load_average()
    report["elapsed_seconds"] = round(time.time() - started, 1)
    write_report(report, workdir)

  wanted = config.get("xla_flags", "")
  report["xla_flags_applied"] = wanted in os.environ.get("XLA_FLAGS", "")
  if not report["xla_flags_applied"]:
    log(f"warning: config.xla_flags {wanted!r} are not in XLA_FLAGS: they "
        f"must be set before JAX starts (benchmarks/run.py does that).")
  dtypes = list(config.compute_dtypes)
  if "bfloat16" in dtypes and not bfloat16_supported():
    dtypes.remove("bfloat16")
    report["bfloat16_skipped"] = "the backend has no bfloat16 convolution"
  log(f"peak: matmul sizes {tuple(config.peak_sizes)}")
  report["peak"] = measure_peak(
      config.peak_sizes, [d for d in ("float32", "bfloat16") if d in dtypes
                          or d == "float32"],
      repeats=config.repeats, warmup=config.warmup)
  save()
  for name in config.models:
    for dtype in dtypes:
      if dtype != "float32" and name not in config.reduced_precision_models:
        continue
      log(f"model {name} ({dtype})")
      report["models"].append(benchmark_model(
          config, name, dtype, log,
          os.path.join(workdir, "profile") if config.profile else None))
      save()
  for name in config.train_models:
    log(f"training {name}")
    report["training"].append(benchmark_training(config, name, log))
    save()
  for devices in config.split_devices:
    log(f"device split on {devices} fake CPU devices")
    report["device_split"].append(device_split_report(devices))
    save()
  report["sweep"] = []
  for name, batches in config.get("sweep", {}).items():
    log(f"forward batch sweep {name}: {tuple(batches)}")
    report["sweep"].append(tuning.forward_batch_sweep(
        name, batches, repeats=_setting(config, name, "repeats"),
        warmup=config.warmup, peak_size=config.peak_size))
    save()
  if config.get("flag_trials"):
    log(f"XLA flag trials: {tuple(config.flag_trials)}")
    report["flag_trials"] = tuning.xla_flag_trials(
        config.flag_trials, [tuple(m) for m in config.flag_trial_models],
        alternations=config.flag_trial_alternations,
        peak_size=config.peak_size, repeats=config.repeats, log=log)
    save()
  report["peak_rss_bytes_process"] = peak_rss_bytes()
  save()
  return report


# ----------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------


def _fmt(value, digits=3) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, dict):
    return (f"{_fmt(value['median'], digits)} "
            f"[{_fmt(value['min'], digits)}, {_fmt(value['max'], digits)}]")
  if abs(value) >= 1000:
    return f"{value:,.0f}"
  return f"{value:.{digits}g}"


def _footprint(costs: Mapping[str, Any]) -> int | None:
  """Bytes XLA holds during a program: arguments + outputs + temporaries,
  minus the outputs that alias (reuse) donated arguments."""
  if costs.get("temp_bytes") is None:
    return None
  return (costs["argument_bytes"] + costs["output_bytes"] +
          costs["temp_bytes"] - (costs["alias_bytes"] or 0))


def _mib(value) -> str:
  return "n/a" if value is None else f"{value / 2**20:,.1f}"


def to_markdown(report: Mapping[str, Any]) -> str:
  """The report as Markdown tables (medians, [min, max] over the rounds)."""
  env = report["environment"]
  lines = [
      "# Certifier benchmark",
      "",
      f"Backend `{env['backend']}` ({env['device_kind']}, "
      f"{env['device_count']} device(s), {env['processor']}, "
      f"{env['cpu_count']} CPUs), JAX {env['jax_version']}, XLA_FLAGS "
      f"`{env['xla_flags'] or '(none)'}`. Load average at start "
      f"{report.get('load_average_start')}, at the end "
      f"{report.get('load_average_now')}; {report.get('elapsed_seconds')} s.",
      "",
      "Medians over the timed rounds, [min, max] in brackets; ratios are per "
      "round (see benchmarks/certifier.py for the protocol).",
      "",
      "## Peak: square matrix product",
      "",
      "| dtype | size | GFLOP/s |",
      "|---|---|---|",
  ]
  for row in report["peak"]:
    if row.get("supported"):
      rate = {k: (v / 1e9 if isinstance(v, float) else v)
              for k, v in row["flops_per_second"].items()}
      lines.append(f"| {row['dtype']} | {row['size']} | {_fmt(rate)} |")
    else:
      lines.append(f"| {row['dtype']} | {row['size']} | unsupported |")
  lines += [
      "",
      "## Forward pass and certification",
      "",
      "Certification = the jitted vote-counting program of `dssn_counts`, "
      "timed over the first `timed` noise samples (same chunk and batch) and "
      "extrapolated to all L (padded last chunk included; cert fwd/s counts "
      "the L useful forward passes per image). MFU = model FLOP/s over the "
      "float32 matmul peak of the same round. XLA peak = temporaries + "
      "arguments + outputs of the program compiled for the full L.",
      "",
      "| model | dtype | MFLOP/fwd | fwd batch (images x chunk) | raw fwd/s "
      "| raw MFU | sigma | L | timed | cert fwd/s | cert/raw | cert MFU "
      "| s/image | XLA peak MiB (full L) | compile s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in report["models"]:
    for sigma, entry in row["sigmas"].items():
      lines.append(
          f"| {row['model']} | {row['compute_dtype']} | "
          f"{_fmt(row['flops_per_forward'] / 1e6)} | {row['forward_batch']} "
          f"({row['images']} x {entry['chunk_size']}) | "
          f"{_fmt(row['raw_forwards_per_second'])} | "
          f"{_fmt(row['raw_utilization'], 2)} | {sigma} | {entry['levels']} | "
          f"{entry['timed_items']} | {_fmt(entry['forwards_per_second'])} | "
          f"{_fmt(entry['ratio_to_raw'])} | {_fmt(entry['utilization'], 2)} | "
          f"{_fmt(entry['seconds_per_image'])} | "
          f"{_mib(entry['peak_bytes'])} | "
          f"{_fmt(entry['full_program_compile_seconds'], 2)} |")
  end_to_end = [(r, r[k]) for k in ("end_to_end", "host_overhead")
                for r in report["models"] if k in r]
  if end_to_end:
    lines += ["", "Full `dssn_counts` calls (all L samples, host checks "
              "included; host s/call = until the call returns, before its "
              "result is ready):", "",
              "| model | dtype | sigma | L | images | s/call | host s/call "
              "| s/image |", "|---|---|---|---|---|---|---|---|"]
    for row, e in end_to_end:
      lines.append(f"| {row['model']} | {row['compute_dtype']} | {e['sigma']} "
                   f"| {e['levels']} | {e['images']} | "
                   f"{_fmt(e['seconds_per_call'])} | "
                   f"{_fmt(e['host_seconds_per_call'])} | "
                   f"{_fmt(e['seconds_per_image'])} |")
  profiled = [r for r in report["models"] if "top" in r.get("profile", {})]
  if profiled:
    lines += ["", "## Where certification time goes (jax.profiler trace, "
              "exclusive thread time per XLA operation)", "",
              "| model | dtype | top operations (share of thread time) |",
              "|---|---|---|"]
    for row in profiled:
      ops = ", ".join(f"{op['op']} {op['share']:.1%}"
                      for op in row["profile"]["top"][:6])
      lines.append(f"| {row['model']} | {row['compute_dtype']} | {ops} |")
  if report["training"]:
    lines += ["", "## Training step (DSSN noise, SGD, donated state)", "",
              "| model | batch | images/s | GFLOP/step | MFU | XLA MiB "
              "(donated) | XLA MiB (not donated) |",
              "|---|---|---|---|---|---|---|"]
    for row in report["training"]:
      lines.append(f"| {row['model']} | {row['batch']} | "
                   f"{_fmt(row['images_per_second'])} | "
                   f"{_fmt(row['flops_per_step'] / 1e9)} | "
                   f"{_fmt(row['utilization'], 2)} | "
                   f"{_mib(_footprint(row['step_program']))} | "
                   f"{_mib(_footprint(row['step_program_without_donation']))}"
                   f" |")
  if report["device_split"]:
    lines += ["", "## Work split over fake CPU devices", "",
              "| devices | batch | split | chunk/device | per-device input "
              "batches | per-device FLOPs / one device's | identical counts |",
              "|---|---|---|---|---|---|---|"]
    for row in report["device_split"]:
      if "error" in row:
        lines.append(f"| {row['devices']} | error | | | | | |")
        continue
      for case in row["cases"]:
        lines.append(
            f"| {row['devices']} | {case['batch']} | {case['split']} | "
            f"{case['chunk_per_device']} | "
            f"{case['per_device_input_batches']} | "
            f"{_fmt(case['per_device_share'])} | "
            f"{case['identical_to_one_device']} |")
  lines += tuning.to_markdown(report)
  return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], workdir: str) -> None:
  """Writes benchmark.json and benchmark.md atomically into workdir."""
  for name, text in ((RESULTS_JSON, json.dumps(report, indent=2,
                                                default=str)),
                     (RESULTS_MARKDOWN, to_markdown(report))):
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
