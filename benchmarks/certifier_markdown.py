"""The certifier benchmark's report as Markdown (benchmark.md).

`to_markdown` renders the dict that `certifier.run_benchmark` builds (and
saves as benchmark.json), one table per section, every figure as its median
with [min, max] over the timed rounds; the tuning sections come from
`tuning.to_markdown`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks import measure
from benchmarks import tuning


def _fmt(value, digits=3) -> str:
  """A figure for a table cell: a summary as 'median [min, max]', 1,000 and
  above with thousands separators, else `digits` significant digits."""
  if value is None:
    return "n/a"
  if isinstance(value, dict):
    return (
        f"{_fmt(value['median'], digits)} "
        f"[{_fmt(value['min'], digits)}, {_fmt(value['max'], digits)}]"
    )
  if abs(value) >= 1000:
    return f"{value:,.0f}"
  return f"{value:.{digits}g}"


def _mib(value) -> str:
  """Bytes as MiB with one decimal; n/a for None."""
  return "n/a" if value is None else f"{value / 2**20:,.1f}"


def _header_lines(report: Mapping[str, Any]) -> list[str]:
  """The title, the machine and the load it ran under."""
  env = report["environment"]
  return [
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
  ]


def _peak_lines(report: Mapping[str, Any]) -> list[str]:
  """The matmul peak table, GFLOP/s per dtype and size."""
  lines = [
      "",
      "## Peak: square matrix product",
      "",
      "| dtype | size | GFLOP/s |",
      "|---|---|---|",
  ]
  for row in report["peak"]:
    if row.get("supported"):
      rate = {
          k: v / 1e9 if isinstance(v, float) else v
          for k, v in row["flops_per_second"].items()
      }
      lines.append(f"| {row['dtype']} | {row['size']} | {_fmt(rate)} |")
    else:
      lines.append(f"| {row['dtype']} | {row['size']} | unsupported |")
  return lines


def _certification_lines(report: Mapping[str, Any]) -> list[str]:
  """Raw forward and certification throughput, one line per model, dtype
  and sigma."""
  lines = [
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
          f"{_fmt(entry['full_program_compile_seconds'], 2)} |"
      )
  return lines


def _end_to_end_lines(report: Mapping[str, Any]) -> list[str]:
  """Full dssn_counts calls (end to end, then the host's share); [] if
  none."""
  end_to_end = [
      (r, r[k])
      for k in ("end_to_end", "host_overhead")
      for r in report["models"]
      if k in r
  ]
  if not end_to_end:
    return []
  lines = [
      "",
      "Full `dssn_counts` calls (all L samples, host checks "
      "included; host s/call = until the call returns, before its "
      "result is ready):",
      "",
      "| model | dtype | sigma | L | images | s/call | host s/call "
      "| s/image |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for row, e in end_to_end:
    lines.append(
        f"| {row['model']} | {row['compute_dtype']} | {e['sigma']} "
        f"| {e['levels']} | {e['images']} | "
        f"{_fmt(e['seconds_per_call'])} | "
        f"{_fmt(e['host_seconds_per_call'])} | "
        f"{_fmt(e['seconds_per_image'])} |"
    )
  return lines


def _profile_lines(report: Mapping[str, Any]) -> list[str]:
  """The top XLA operations of each profiled model; [] if none."""
  profiled = [r for r in report["models"] if "top" in r.get("profile", {})]
  if not profiled:
    return []
  lines = [
      "",
      "## Where certification time goes (jax.profiler trace, "
      "exclusive thread time per XLA operation)",
      "",
      "| model | dtype | top operations (share of thread time) |",
      "|---|---|---|",
  ]
  for row in profiled:
    ops = ", ".join(
        f"{op['op']} {op['share']:.1%}" for op in row["profile"]["top"][:6]
    )
    lines.append(f"| {row['model']} | {row['compute_dtype']} | {ops} |")
  return lines


def _training_lines(report: Mapping[str, Any]) -> list[str]:
  """Training step throughput and memory per model; [] if not measured."""
  if not report["training"]:
    return []
  lines = [
      "",
      "## Training step (DSSN noise, SGD, donated state)",
      "",
      "| model | batch | images/s | GFLOP/step | MFU | XLA MiB "
      "(donated) | XLA MiB (not donated) |",
      "|---|---|---|---|---|---|---|",
  ]
  for row in report["training"]:
    lines.append(
        f"| {row['model']} | {row['batch']} | "
        f"{_fmt(row['images_per_second'])} | "
        f"{_fmt(row['flops_per_step'] / 1e9)} | "
        f"{_fmt(row['utilization'], 2)} | "
        f"{_mib(measure.footprint_bytes(row['step_program']))} | "
        f"{_mib(measure.footprint_bytes(row['step_program_without_donation']))}"
        f" |"
    )
  return lines


def _device_split_lines(report: Mapping[str, Any]) -> list[str]:
  """How the work splits over fake CPU devices; [] if not measured."""
  if not report["device_split"]:
    return []
  lines = [
      "",
      "## Work split over fake CPU devices",
      "",
      "| devices | batch | split | chunk/device | per-device input "
      "batches | per-device FLOPs / one device's | identical counts |",
      "|---|---|---|---|---|---|---|",
  ]
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
          f"{case['identical_to_one_device']} |"
      )
  return lines


def to_markdown(report: Mapping[str, Any]) -> str:
  """The report as Markdown tables (medians, [min, max] over the rounds)."""
  lines = (
      _header_lines(report)
      + _peak_lines(report)
      + _certification_lines(report)
      + _end_to_end_lines(report)
      + _profile_lines(report)
      + _training_lines(report)
      + _device_split_lines(report)
      + tuning.to_markdown(report)
  )
  return "\n".join(lines) + "\n"
