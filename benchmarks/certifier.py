"""Throughput of the certifier measured against the machine's own limits.

`run_benchmark(config, workdir)` measures, in one process on the current
backend, and writes `benchmark.json` and `benchmark.md` (rendered by
`certifier_markdown`) into workdir after every section, so that a long run
leaves partial results:

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
jitted computation that `dssn_counts` runs (`dssn.dssn_program` with the
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

from collections.abc import Callable, Mapping, Sequence
import functools
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import certifier_markdown
from benchmarks import measure
from benchmarks import tuning
from dssn_jax.core import chunking
from dssn_jax.core import dssn
from dssn_jax.core import smoothing
from dssn_jax.training import classifier
from dssn_jax.training import loop

RESULTS_JSON = "benchmark.json"
RESULTS_MARKDOWN = "benchmark.md"
# The repository root: subprocesses run `python -m benchmarks.*` from there.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def evaluated_items(levels: int, chunk: int) -> int:
  """Noise samples the vote program evaluates per input for L = levels: the
  last chunk is padded to the full chunk size (its extra samples are not
  counted) so that the program holds one copy of the forward pass."""
  return math.ceil(levels / chunk) * chunk


def certification_program(
    subject: measure.Subject,
    x,
    spec: smoothing.SmoothingSpec,
    *,
    chunk_size: int,
    num_items: int,
):
  """The compiled vote-counting program of `dssn_counts` over k < num_items.

  Returns:
    (run, compiled, compile_seconds): `run()` executes it on x; `compiled`
    is the executable (for cost and memory analysis).
  """
  v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  start = time.perf_counter()
  program, args = dssn.dssn_program(
      subject.apply_fn,
      x,
      v,
      spec,
      params=subject.variables,
      chunk_size=chunk_size,
      num_items=num_items,
  )
  lowered = program.lower(*args)
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  run = functools.partial(compiled, *program.place(*args))
  return run, compiled, compile_seconds


def noise_fusion_report(
    compiled_text: str,
    spec: smoothing.SmoothingSpec,
    images: int,
    input_shape: Sequence[int],
) -> dict:
  """Checks the optimized HLO of a certification program: one loop, no
  buffer holding the noisy inputs of all L samples, and the noise kernel's
  integer `remainder` ops only inside fusions (computed on the fly where the
  noisy input is consumed, not in a separate pass over memory)."""
  all_noisy = (
      f"[{spec.levels},{images}," + ",".join(str(n) for n in input_shape) + "]"
  )
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
  return {
      "while_loops": compiled_text.count(" while("),
      "buffer_of_all_L_noisy_inputs": all_noisy in compiled_text,
      "noise_ops_in_fusions": sum(
          n for c, n in remainders.items() if c in fused
      ),
      "noise_ops_outside_fusions": sum(
          n for c, n in remainders.items() if c not in fused
      ),
  }


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


def _chunk_sizes(
    config, name: str, subject: measure.Subject, images: int, specs
) -> tuple[dict[float, int], dict[str, Any]]:
  """The chunk timed at each sigma, and the row's fields about the choice.

  The chunk is the one dssn_counts would pick for this batch, or a config
  override (e.g. to keep ResNet-50 short on a CPU).
  """
  chunk_override = _setting(config, name, "chunk_size")
  overridden = bool(chunk_override and chunk_override > 0)
  chunks, auto = {}, {}
  for spec in specs:
    auto[spec.sigma] = measure.auto_chunk(subject, images, spec.levels)
    if overridden:
      chunks[spec.sigma] = min(chunk_override, spec.levels)
    else:
      chunks[spec.sigma] = auto[spec.sigma]
  return chunks, {
      "auto_chunk_size": {str(k): c for k, c in auto.items()},
      "chunk_size_overridden": overridden,
      "memory_budget_bytes": chunking.device_memory_budget(),
  }


def _raw_forward(
    subject: measure.Subject, forward_batch: int
) -> tuple[Callable[[], Any], dict[str, Any]]:
  """The jitted forward at the certification forward batch, compiled: its
  call on a fixed batch, and its XLA costs."""
  batch = jnp.asarray(
      measure.grid_images(subject.input_shape, forward_batch, seed=2)
  )
  forward = jax.jit(subject.apply_fn).lower(subject.variables, batch).compile()
  return (
      functools.partial(forward, subject.variables, batch),
      measure.compiled_costs(forward),
  )


def _forward_figures(
    seconds, forward_batch: int, flops_per_forward: float, peak_flops: float
) -> tuple[list[float], list[float], dict[str, Any]]:
  """Per-round raw forwards/s and matmul FLOP/s, and the row's fields."""
  raw_rate = [forward_batch / s for s in seconds["raw"]]
  peak_rate = [peak_flops / s for s in seconds["peak"]]
  raw_flops = [r * flops_per_forward for r in raw_rate]
  return (
      raw_rate,
      peak_rate,
      {
          "peak_flops_per_second": measure.summarize(peak_rate),
          "raw_forwards_per_second": measure.summarize(raw_rate),
          "raw_flops_per_second": measure.summarize(raw_flops),
          "raw_utilization": measure.per_round(raw_flops, peak_rate),
      },
  )


def _certification_figures(
    spec: smoothing.SmoothingSpec,
    images: int,
    timed: tuple,
    seconds: Sequence[float],
    raw_rate: Sequence[float],
    peak_rate: Sequence[float],
    flops_per_forward: float,
) -> dict[str, Any]:
  """Throughput of the timed certification program at one sigma, against
  the raw forward and the matmul peak of the same rounds."""
  _, compiled, num_items, chunk = timed
  evaluated = evaluated_items(spec.levels, chunk)
  timed_rate = [images * num_items / s for s in seconds]
  # Useful forward passes per second over the whole certification: the
  # padding of the last chunk is evaluated but does not count.
  rate = [r * spec.levels / evaluated for r in timed_rate]
  return {
      "levels": spec.levels,
      "chunk_size": chunk,
      "timed_items": num_items,
      "timed_forwards": images * num_items,
      "evaluated_items": evaluated,
      "timed_forwards_per_second": measure.summarize(timed_rate),
      "forwards_per_second": measure.summarize(rate),
      "seconds_per_image": measure.summarize([spec.levels / r for r in rate]),
      "ratio_to_raw": measure.per_round(rate, raw_rate),
      "utilization": measure.per_round(
          [r * flops_per_forward for r in rate], peak_rate
      ),
      "timed_program": measure.compiled_costs(compiled),
  }


def _full_program_figures(
    subject: measure.Subject, x, spec: smoothing.SmoothingSpec, chunk: int
) -> dict[str, Any]:
  """Memory of the whole certification program at the full L (compiled,
  not run): XLA's temporaries, arguments and outputs; and whether its noise
  is made inside the loop's fusions."""
  _, full, compile_seconds = certification_program(
      subject, x, spec, chunk_size=chunk, num_items=spec.levels
  )
  full_costs = measure.compiled_costs(full)
  return {
      "full_program": full_costs,
      "full_program_compile_seconds": compile_seconds,
      "peak_bytes": measure.footprint_bytes(full_costs),
      "noise_fusion": noise_fusion_report(
          full.as_text(), spec, x.shape[0], subject.input_shape
      ),
  }


def benchmark_model(
    config,
    name: str,
    compute_dtype: str,
    log: Callable[[str], None] = logging.info,
    profile_dir: str | None = None,
) -> dict[str, Any]:
  """Forward, certification and memory figures of one model and dtype.

  With profile_dir, one call of the certification program at the first
  sigma is also traced there and broken down by XLA operation.
  """
  repeats = _setting(config, name, "repeats")
  images = _setting(config, name, "images")
  subject = measure.make_subject(name, compute_dtype)
  specs = [smoothing.SmoothingSpec(s, config.q) for s in config.sigmas]
  row = {
      "model": name,
      "compute_dtype": compute_dtype,
      "input_shape": list(subject.input_shape),
      "images": images,
      "sigmas": {},
  }
  x = measure.grid_images(subject.input_shape, images)
  chunks, chunk_fields = _chunk_sizes(config, name, subject, images, specs)
  row.update(chunk_fields)
  forward_batch = max(chunks.values()) * images
  row["forward_batch"] = forward_batch
  raw, forward_costs = _raw_forward(subject, forward_batch)
  row["forward"] = forward_costs
  flops_per_forward = (forward_costs["flops"] or 0.0) / forward_batch
  row["flops_per_forward"] = flops_per_forward
  fns = {"peak": measure.matmul(config.peak_size, jnp.float32)[0], "raw": raw}
  timed = {}  # sigma -> (run, compiled, num_items, chunk)
  for spec in specs:
    chunk = chunks[spec.sigma]
    num_items = min(spec.levels, _setting(config, name, "timed_chunks") * chunk)
    run, compiled, _ = certification_program(
        subject, x, spec, chunk_size=chunk, num_items=num_items
    )
    timed[spec.sigma] = (run, compiled, num_items, chunk)
    fns[f"cert_{spec.sigma}"] = run

  log(
      f"  {name} {compute_dtype}: timing (forward batch {forward_batch}, "
      f"{repeats} rounds)"
  )
  seconds = measure.timed_rounds(fns, repeats=repeats, warmup=config.warmup)
  raw_rate, peak_rate, forward_fields = _forward_figures(
      seconds, forward_batch, flops_per_forward, 2.0 * config.peak_size**3
  )
  row.update(forward_fields)
  for spec in specs:
    entry = _certification_figures(
        spec,
        images,
        timed[spec.sigma],
        seconds[f"cert_{spec.sigma}"],
        raw_rate,
        peak_rate,
        flops_per_forward,
    )
    entry.update(_full_program_figures(subject, x, spec, timed[spec.sigma][3]))
    row["sigmas"][str(spec.sigma)] = entry
  if profile_dir:
    row["profile"] = measure.profile_breakdown(
        timed[specs[0].sigma][0],
        os.path.join(profile_dir, f"{name}_{compute_dtype}"),
    )
  peaks = [e["peak_bytes"] for e in row["sigmas"].values()]
  row["peak_bytes_ratio_max_min"] = (
      max(peaks) / max(1, min(peaks)) if None not in peaks else None
  )
  row["process_peak_rss_bytes"] = measure.peak_rss_bytes()
  if f"{name}:{compute_dtype}" in config.end_to_end:
    row["end_to_end"] = _end_to_end(
        subject, x, specs[0], repeats=config.end_to_end_repeats
    )
  # Host work per dssn_counts call, at a small L (the host's share of the
  # call does not depend on L).
  row["host_overhead"] = _end_to_end(
      subject,
      x,
      smoothing.SmoothingSpec(config.host_sigma, config.q),
      repeats=config.end_to_end_repeats,
  )
  return row


def _end_to_end(subject: measure.Subject, x, spec, *, repeats: int) -> dict:
  """Full `dssn_counts` calls (all L samples, host checks included).

  Also times how long the call takes to return before its result is ready:
  the host-side work (input checks, dispatch); the rest runs on the device
  without the host.
  """
  v = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  call = lambda: dssn.dssn_counts(
      subject.apply_fn, x, v, spec, params=subject.variables
  )
  jax.block_until_ready(call())  # Compile.
  total, host = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    counts = call()
    host.append(time.perf_counter() - start)
    jax.block_until_ready(counts)
    total.append(time.perf_counter() - start)
  return {
      "sigma": spec.sigma,
      "levels": spec.levels,
      "images": int(x.shape[0]),
      "seconds_per_call": measure.summarize(total),
      "host_seconds_per_call": measure.summarize(host),
      "seconds_per_image": measure.summarize([s / x.shape[0] for s in total]),
  }


def benchmark_training(
    config, name: str, log: Callable[[str], None] = logging.info
) -> dict[str, Any]:
  """Images/s of the jitted training step (DSSN noise, donated state)."""
  repeats = _setting(config, name, "repeats")
  batch_size = _setting(config, name, "train_batch")
  subject = measure.make_subject(name, "float32")
  train_config = config.train.copy_and_resolve_references()
  spec = smoothing.SmoothingSpec(train_config.sigma, train_config.q)
  offsets = smoothing.make_offsets(0, subject.input_shape, spec.levels)
  step = jax.jit(
      classifier.make_train_step(subject.model, train_config, spec, offsets),
      donate_argnums=0,
  )
  state = loop.TrainState.create(
      apply_fn=subject.model.apply,
      params=subject.variables["params"],
      batch_stats=subject.variables.get("batch_stats", {}),
      tx=classifier.create_optimizer(train_config, 1000),
  )
  rng = np.random.RandomState(0)
  batch = {
      "image": jnp.asarray(
          rng.randint(0, 256, (batch_size,) + subject.input_shape, np.uint8)
      ),
      "label": jnp.asarray(
          rng.randint(0, subject.num_classes, (batch_size,)), jnp.int32
      ),
  }
  key = jax.random.key(0)
  compiled = step.lower(state, batch, key).compile()
  costs = measure.compiled_costs(compiled)
  # What donating the state saves: the same step compiled without donation.
  undonated = measure.compiled_costs(
      jax.jit(
          classifier.make_train_step(subject.model, train_config, spec, offsets)
      )
      .lower(state, batch, key)
      .compile()
  )
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch, key)
    return metrics

  fns = {"peak": measure.matmul(config.peak_size, jnp.float32)[0], "train": run}
  log(f"  {name}: training step, batch {batch_size}, {repeats} rounds")
  seconds = measure.timed_rounds(fns, repeats=repeats, warmup=config.warmup)
  peak_rate = [2.0 * config.peak_size**3 / s for s in seconds["peak"]]
  flops = costs["flops"] or 0.0
  return {
      "model": name,
      "batch": batch_size,
      "images_per_second": measure.summarize(
          [batch_size / s for s in seconds["train"]]
      ),
      "flops_per_step": flops,
      "utilization": measure.per_round(
          [flops / s for s in seconds["train"]], peak_rate
      ),
      "step_program": costs,
      "step_program_without_donation": undonated,
  }


# ----------------------------------------------------------------------------
# Fake CPU devices: how the work splits over a mesh.
# ----------------------------------------------------------------------------


def device_split_report(
    num_devices: int,
    *,
    model: str = "small_cnn",
    sigma: float = 0.12,
    batch: int = 8,
    timeout: float = 900,
) -> dict[str, Any]:
  """Runs `benchmarks.device_split` on `num_devices` fake CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={num_devices}"
  )
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "benchmarks.device_split",
          str(num_devices),
          model,
          str(sigma),
          str(batch),
      ],
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
      cwd=_ROOT,
  )
  if result.returncode:
    return {"devices": num_devices, "error": result.stderr[-2000:]}
  return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# The whole run.
# ----------------------------------------------------------------------------


def bfloat16_supported() -> bool:
  """Whether the backend compiles and runs a bfloat16 convolution."""
  try:
    x = jnp.ones((1, 8, 8, 4), jnp.bfloat16)
    w = jnp.ones((3, 3, 4, 4), jnp.bfloat16)
    out = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return bool(jnp.isfinite(out.astype(jnp.float32)).all())
  except Exception:  # pylint: disable=broad-except
    return False


def run_benchmark(
    config, workdir: str, log: Callable[[str], None] = logging.info
) -> dict[str, Any]:
  """Runs every section of the config; writes JSON and Markdown to workdir."""
  os.makedirs(workdir, exist_ok=True)
  started = time.time()
  report: dict[str, Any] = {
      "environment": measure.environment(),
      "config": config.to_dict(),
      "load_average_start": measure.load_average(),
      "peak": [],
      "models": [],
      "training": [],
      "device_split": [],
  }

  def save():
    report["load_average_now"] = measure.load_average()
    report["elapsed_seconds"] = round(time.time() - started, 1)
    write_report(report, workdir)

  wanted = config.get("xla_flags", "")
  report["xla_flags_applied"] = wanted in os.environ.get("XLA_FLAGS", "")
  if not report["xla_flags_applied"]:
    log(
        f"warning: config.xla_flags {wanted!r} are not in XLA_FLAGS: they "
        f"must be set before JAX starts (benchmarks/run.py does that)."
    )
  dtypes = list(config.compute_dtypes)
  if "bfloat16" in dtypes and not bfloat16_supported():
    dtypes.remove("bfloat16")
    report["bfloat16_skipped"] = "the backend has no bfloat16 convolution"
  log(f"peak: matmul sizes {tuple(config.peak_sizes)}")
  report["peak"] = measure.measure_peak(
      config.peak_sizes,
      [d for d in ("float32", "bfloat16") if d in dtypes or d == "float32"],
      repeats=config.repeats,
      warmup=config.warmup,
  )
  save()
  for name in config.models:
    for dtype in dtypes:
      if dtype != "float32" and name not in config.reduced_precision_models:
        continue
      log(f"model {name} ({dtype})")
      report["models"].append(
          benchmark_model(
              config,
              name,
              dtype,
              log,
              os.path.join(workdir, "profile") if config.profile else None,
          )
      )
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
    report["sweep"].append(
        tuning.forward_batch_sweep(
            name,
            batches,
            repeats=_setting(config, name, "repeats"),
            warmup=config.warmup,
            peak_size=config.peak_size,
        )
    )
    save()
  if config.get("flag_trials"):
    log(f"XLA flag trials: {tuple(config.flag_trials)}")
    report["flag_trials"] = tuning.xla_flag_trials(
        config.flag_trials,
        [tuple(m) for m in config.flag_trial_models],
        alternations=config.flag_trial_alternations,
        peak_size=config.peak_size,
        repeats=config.repeats,
        log=log,
    )
    save()
  report["peak_rss_bytes_process"] = measure.peak_rss_bytes()
  save()
  return report


# ----------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------


def write_report(report: Mapping[str, Any], workdir: str) -> None:
  """Writes benchmark.json and benchmark.md atomically into workdir."""
  for name, text in (
      (RESULTS_JSON, json.dumps(report, indent=2, default=str)),
      (RESULTS_MARKDOWN, certifier_markdown.to_markdown(report)),
  ):
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
