"""The Markdown tables of docs/accelerators.md from benchmarks/aot.py's
JSON lines: one table per program, one row per target.

Estimated seconds per image (per chip: what one chip spends on an image;
per slice: the wall time per image of the whole slice) come from the TPU
compiler's own estimate where it gives one, else from the roofline bound.
Model FLOP utilization (MFU) = the model's FLOPs per image (the classifier
alone, forward passes only) over chip-seconds per image times the chip's
peak: of the estimate, so an estimate too; none from a roofline without
the bytes accessed (GPUs, where XLA gives no cost analysis), whose MFU is
100% by construction.
Memory over the device's is marked "does not fit".
"""

from __future__ import annotations

import json

GIB = 2**30

HEADER = (
    "| target | batch | fwd/device | compile s | GiB/device (HBM) | "
    "GFLOP/image | compiler s/img/chip | roofline s/img/chip | "
    "img/h/chip | img/h/slice | MFU |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def _row(r: dict, peak_flops) -> str:
  if "error" in r:
    return (
        f"| {r['target']} | {r['batch']} | | | | | | | | | "
        f"fails: {r['error'][:160].replace('|', '/')} |"
    )
  chips = r["chips"]
  compiler = r.get("compiler_seconds_per_image_slice")
  roofline = r.get("roofline_seconds_per_image_slice")
  compiler_chip = compiler * chips if compiler else None
  roofline_chip = roofline * chips if roofline else None
  best = compiler or roofline
  per_chip = 3600 / (best * chips) if best else None
  per_slice = 3600 / best if best else None
  mfu = None
  # From the roofline only where the target's compiler counted the bytes
  # too (TPUs): without them (GPUs) it is 100% by construction.
  counted = compiler or (r.get("flops_counted_by") == "target" and roofline)
  if counted and r.get("model_flops_per_image") and peak_flops:
    mfu = r["model_flops_per_image"] / (counted * chips * peak_flops)
  memory = f"{r['device_bytes'] / GIB:.2f} ({r['hbm_bytes'] / GIB:.0f})"
  if r["device_bytes"] > r["hbm_bytes"]:
    memory += " does not fit"
  flops = r.get("flops_per_image")
  return (
      f"| {r['target']} | {r['batch']} | "
      f"{r.get('forward_batch_per_device', '-')} | "
      f"{r['compile_seconds']:.0f} | "
      f"{memory} | "
      f"{_fmt(flops / 1e9 if flops else None, '.1f')} | "
      f"{_fmt(compiler_chip, '.3g')} | {_fmt(roofline_chip, '.3g')} | "
      f"{_fmt(per_chip, ',.0f')} | {_fmt(per_slice, ',.0f')} | "
      f"{_fmt(mfu, '.0%')} |"
  )


def tables(path: str, programs=()) -> str:
  """One Markdown table per program of the JSON lines file at path.

  Args:
    path: benchmarks/aot.py's JSON lines.
    programs: program names, in the order of the tables; empty: every
      program of the file, in the order of their first lines.

  Returns:
    The tables, rows in the order of `accelerators.TARGETS`.
  """
  from dssn_jax.runtime import accelerators  # pylint: disable=g-import-not-at-top

  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  order = list(accelerators.TARGETS)
  rows.sort(key=lambda r: order.index(r["target"]))
  programs = list(programs) or list(dict.fromkeys(r["program"] for r in rows))
  out = []
  for program in programs:
    chosen = [r for r in rows if r["program"] == program]
    if not chosen:
      continue
    out += [f"#### {program}", "", HEADER]
    for r in chosen:
      target = accelerators.TARGETS[r["target"]]
      dtype = "float32" if " f32" in program else "bfloat16"
      out.append(_row(r, target.chip.peak_flops(dtype)))
    out.append("")
  return "\n".join(out)
