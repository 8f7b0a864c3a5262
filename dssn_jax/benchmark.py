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
  (compiled memory analysis of the whole certification program at the full
  L, and the process's peak resident memory during a timed call);
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
for every chunk, so seconds per image is extrapolated as L / (forward passes
per second) per image. For the configs listed in `end_to_end`, one full
`dssn_counts` call (all L samples, host-side input checks included) is also
timed to check that extrapolation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dssn_jax import certify
from dssn_jax import data
from dssn_jax import models
from dssn_jax import smoothing
from dssn_jax import train

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


def reset_peak_rss() -> bool:
  """Resets the process's peak resident set size (Linux; False elsewhere)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss_bytes() -> int | None:
  """Peak resident set size of this process since the last reset (Linux)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


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
  """FLOP/s of square matrix products of each size and dtype."""
  rows = []
  for dtype in dtypes:
    for size in sizes:
      try:
        fn, flops = matmul(size, jnp.dtype(dtype))
        seconds = timed_rounds({"mm": fn}, repeats=repeats,
                               warmup=warmup)["mm"]
      except Exception as e:  # pylint: disable=broad-except
        rows.append({"dtype": dtype, "size": size, "supported": False,
                     "error": f"{type(e).__name__}: {e}"[:300]})
        continue
      rows.append({"dtype": dtype, "size": size, "supported": True,
                   "flops": flops,
                   "flops_per_second": summarize([flops / s
                                                  for s in seconds])})
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
  info = data.dataset_info(MODEL_DATASETS[name])
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


def certification_program(subject: Subject, x, spec: smoothing.SmoothingSpec,
                          *, chunk_size: int, num_items: int):
  """The compiled vote-counting program of `dssn_counts` over k < num_items.

  Returns:
    (run, compiled): `run()` executes it on x; `compiled` is the executable
    (for cost and memory analysis).
  """
  v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  x = jnp.asarray(x)
  row_ids = jnp.zeros(x.shape[0], jnp.int32)
  compiled = certify._vote_counts.lower(  # pylint: disable=protected-access
      subject.variables, x, row_ids, v, apply_fn=subject.apply_fn,
      make_noisy=certify._dssn_sample(spec),  # pylint: disable=protected-access
      num_items=num_items, chunk_size=chunk_size, mesh=None).compile()
  return functools.partial(compiled, subject.variables, x, row_ids, v), compiled


def noise_fusion_report(compiled_text: str, spec: smoothing.SmoothingSpec,
                        images: int, input_shape: Sequence[int]) -> dict:
  """Checks in the optimized HLO that the noisy inputs are never stored for
  all L samples at once, and that the noise kernel's integer ops sit inside
  fusions (no separate pass over memory)."""
  d = math.prod(input_shape)
  all_noisy = f"[{spec.levels},{images}," + ",".join(
      str(n) for n in input_shape) + "]"
  lines = compiled_text.splitlines()
  top_level_remainders = 0
  in_fused = False
  for line in lines:
    stripped = line.strip()
    if stripped.startswith(("%fused", "fused_computation", "%parallel")) or (
        " fused_computation" in line and "{" in line):
      in_fused = True
    if stripped.startswith("}"):
      in_fused = False
    if " remainder(" in line and not in_fused:
      top_level_remainders += 1
  return {"while_loops": sum(" while(" in line for line in lines),
          "buffer_of_all_L_noisy_inputs": all_noisy in compiled_text
                                          and d > 0,
          "unfused_noise_ops": top_level_remainders}


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
                    log: Callable[[str], None] = print) -> dict[str, Any]:
  """Forward, certification and memory figures of one model and dtype."""
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
  # The chunk dssn_counts would pick for this batch (per sigma).
  chunks = {}
  for spec in specs:
    if chunk_override and chunk_override > 0:
      chunks[spec.sigma] = min(chunk_override, spec.levels)
    else:
      chunks[spec.sigma] = _auto_chunk(subject, images, spec.levels)
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
    run, compiled = certification_program(subject, x, spec, chunk_size=chunk,
                                          num_items=num_items)
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
    rate = [images * num_items / s for s in seconds[f"cert_{spec.sigma}"]]
    costs = compiled_costs(compiled)
    entry = {
        "levels": spec.levels, "chunk_size": chunk,
        "timed_items": num_items,
        "timed_forwards": images * num_items,
        "forwards_per_second": summarize(rate),
        "seconds_per_image": summarize([spec.levels / r for r in rate]),
        "ratio_to_raw": per_round(rate, raw_rate),
        "utilization": per_round([r * flops_per_forward for r in rate],
                                 peak_rate),
        "timed_program": costs,
    }
    # Memory of the whole certification program at the full L (compiled,
    # not run), and the process's peak RSS during one timed call.
    _, full = certification_program(subject, x, spec, chunk_size=chunk,
                                     num_items=spec.levels)
    full_costs = compiled_costs(full)
    entry["full_program"] = full_costs
    entry["noise_fusion"] = noise_fusion_report(
        full.as_text(), spec, images, subject.input_shape)
    if reset_peak_rss():
      jax.block_until_ready(run())
      entry["peak_rss_bytes"] = peak_rss_bytes()
    row["sigmas"][str(spec.sigma)] = entry

  if f"{name}:{compute_dtype}" in config.end_to_end:
    row["end_to_end"] = _end_to_end(subject, x, specs[0],
                                    repeats=config.end_to_end_repeats)
  return row


def _end_to_end(subject: Subject, x, spec, *, repeats: int) -> dict:
  """One full `dssn_counts` call (all L samples, host checks included)."""
  v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  call = lambda: certify.dssn_counts(subject.apply_fn, x, v, spec,
                                     params=subject.variables)
  seconds = timed_rounds({"full": call}, repeats=repeats, warmup=1)["full"]
  return {"sigma": spec.sigma, "levels": spec.levels,
          "images": int(x.shape[0]),
          "seconds_per_call": summarize(seconds),
          "seconds_per_image": summarize([s / x.shape[0] for s in seconds])}


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
          "step_program": costs}


# ----------------------------------------------------------------------------
# Fake CPU devices: how the work splits over a mesh.
# ----------------------------------------------------------------------------

_SPLIT_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from dssn_jax import benchmark, certify, smoothing
    devices, name, sigma, batch = (int(sys.argv[1]), sys.argv[2],
                                   float(sys.argv[3]), int(sys.argv[4]))
    assert jax.device_count() == devices, jax.devices()
    subject = benchmark.make_subject(name)
    spec = smoothing.SmoothingSpec(sigma)
    v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
    x = benchmark.grid_images(subject.input_shape, batch)
    report = {"devices": devices, "model": name, "levels": spec.levels,
              "cases": []}
    reference = np.asarray(certify.dssn_counts(
        subject.apply_fn, x, v, spec, params=subject.variables))
    for rows in (batch, 1):
      mesh = certify.make_mesh()
      chunk = benchmark._auto_chunk(subject, rows, spec.levels, devices)
      counts = np.asarray(certify.dssn_counts(
          subject.apply_fn, x[:rows], v, spec, params=subject.variables,
          mesh=mesh))
      lowered = certify._vote_counts.lower(
          subject.variables, jnp.asarray(x[:rows]),
          jnp.zeros(rows, jnp.int32), v, apply_fn=subject.apply_fn,
          make_noisy=certify._dssn_sample(spec), num_items=spec.levels,
          chunk_size=None, mesh=mesh)
      text = lowered.compile().as_text()
      # Input shapes of the convolutions of the partitioned (per-device)
      # program: their batch dimension is the per-device forward batch.
      conv_batches = sorted({int(m.group(1)) for m in re.finditer(
          r"f32\\[(\\d+),\\d+,\\d+,\\d+\\]\\{[^}]*\\} convolution", text)})
      forward_batches = sorted({int(m.group(1)) for m in re.finditer(
          r"= f32\\[(\\d+),%d\\]" % subject.num_classes, text)})
      report["cases"].append({
          "batch": rows,
          "split": "batch" if rows >= devices else "noise samples",
          "chunk_per_device": chunk,
          "per_device_conv_output_batch": conv_batches,
          "per_device_logits_rows": forward_batches,
          "identical_to_one_device": bool(np.array_equal(counts,
                                                         reference[:rows])),
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
      report["models"].append(benchmark_model(config, name, dtype, log))
      save()
  for name in config.train_models:
    log(f"training {name}")
    report["training"].append(benchmark_training(config, name, log))
    save()
  for devices in config.split_devices:
    log(f"device split on {devices} fake CPU devices")
    report["device_split"].append(device_split_report(devices))
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
      "round (see dssn_jax/benchmark.py for the protocol).",
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
      "Certification = the jitted vote-counting program of `dssn_counts` over "
      "the first `timed` noise samples (same chunk and batch); s/image = L / "
      "(forwards/s per image). MFU = model FLOP/s over the float32 matmul "
      "peak of the same round.",
      "",
      "| model | dtype | MFLOP/fwd | fwd batch (images x chunk) | raw fwd/s "
      "| raw MFU | sigma | L | timed | cert fwd/s | cert/raw | cert MFU "
      "| s/image | temp MiB (full L) | peak RSS MiB |",
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
          f"{_mib(entry['full_program']['temp_bytes'])} | "
          f"{_mib(entry.get('peak_rss_bytes'))} |")
  end_to_end = [r for r in report["models"] if "end_to_end" in r]
  if end_to_end:
    lines += ["", "Full `dssn_counts` calls (all L samples, host checks "
              "included):", "",
              "| model | dtype | sigma | L | images | s/call | s/image |",
              "|---|---|---|---|---|---|---|"]
    for row in end_to_end:
      e = row["end_to_end"]
      lines.append(f"| {row['model']} | {row['compute_dtype']} | {e['sigma']} "
                   f"| {e['levels']} | {e['images']} | "
                   f"{_fmt(e['seconds_per_call'])} | "
                   f"{_fmt(e['seconds_per_image'])} |")
  if report["training"]:
    lines += ["", "## Training step (DSSN noise, SGD, donated state)", "",
              "| model | batch | images/s | GFLOP/step | MFU |",
              "|---|---|---|---|---|"]
    for row in report["training"]:
      lines.append(f"| {row['model']} | {row['batch']} | "
                   f"{_fmt(row['images_per_second'])} | "
                   f"{_fmt(row['flops_per_step'] / 1e9)} | "
                   f"{_fmt(row['utilization'], 2)} |")
  if report["device_split"]:
    lines += ["", "## Work split over fake CPU devices", "",
              "| devices | batch | split | chunk/device | per-device conv "
              "batch | identical counts |", "|---|---|---|---|---|---|"]
    for row in report["device_split"]:
      if "error" in row:
        lines.append(f"| {row['devices']} | error | | | | |")
        continue
      for case in row["cases"]:
        lines.append(
            f"| {row['devices']} | {case['batch']} | {case['split']} | "
            f"{case['chunk_per_device']} | "
            f"{case['per_device_conv_output_batch']} | "
            f"{case['identical_to_one_device']} |")
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
