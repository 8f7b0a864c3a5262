r"""Compiled for TPUs and GPUs without one: memory, cost and estimates.

  JAX_PLATFORMS=cpu .venv-aot/bin/python -m benchmarks.aot \
      --out=runs/aot/aot.jsonl [--targets=v5p-8,1x\ H100] [--programs=...]
  .venv/bin/python -m benchmarks.aot --markdown=runs/aot/aot.jsonl \
      [--programs=...]

Compiles every program of MATRIX (or the --programs named, of MATRIX and
SWEEPS) for every target of
`dssn_jax.runtime.accelerators.TARGETS` with `dssn_jax.runs.aot` (the
library's code path, its default chunk size, compile-only devices) and
appends one JSON line per (target, program) to --out as it goes, so a long
run can be read (and resumed: done lines are skipped) at any time. A
program that does not compile gets its error in the line; each line is
compiled in a process of its own, so a compiler that crashes its process
gives a line "Crash: ..." instead of ending the run.

Per line: compile seconds, per-chip memory against the chip's memory, the
FLOPs per image (XLA's count on TPU; on GPU, where XLA gives no cost
analysis, the host CPU compiler's count of one forward pass times the
forward passes), the TPU compiler's own time estimate (optimal_seconds)
where it gives a positive one, the roofline bound from the chip's
published peak FLOP/s and bandwidth, and the seconds per image and images
per hour they imply per chip and per slice. All of these but memory and
compile time are estimates; nothing here ran on an accelerator.
--markdown prints the tables of docs/accelerators.md from such a file (of
--programs, in that order, or of every program in it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import traceback

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import isolated

_OUT = flags.DEFINE_string("out", "runs/aot/aot.jsonl", "JSON lines out.")
_TARGETS = flags.DEFINE_list("targets", [], "Targets (default: all).")
_PROGRAMS = flags.DEFINE_list(
    "programs", [], "Programs of MATRIX or SWEEPS (default: MATRIX)."
)
_MARKDOWN = flags.DEFINE_string(
    "markdown", "", "Print the Markdown tables of this JSON lines file."
)


@dataclasses.dataclass(frozen=True)
class Program:
  """One row of the matrix: a certification or a training step."""

  name: str
  kind: str  # "dssn", "uniform", "denoised", "forward" or "train".
  model: str
  dataset: str
  dtype: str = "bfloat16"
  sigma: float = 0.5
  batch: int | None = None  # Images per call; None: one per chip.
  num_samples: int = 100_000  # uniform: N.
  global_batch: int = 0  # train.
  chunk_size: int | None = None  # Noisy inputs per image per forward pass.
  layout: str = "nhwc"  # stem: benchmarks/stem_layout.py.


# The matrix of docs/accelerators.md, "Results": every target compiles
# these.
MATRIX = [
    Program(
        "resnet50 dssn s3.5 bf16",
        "dssn",
        "resnet50",
        "imagenet2012",
        sigma=3.5,
    ),
    Program(
        "resnet50 dssn s2 bf16",
        "dssn",
        "resnet50",
        "imagenet2012",
        sigma=2.0,
    ),
    Program("resnet50 dssn s0.5 bf16", "dssn", "resnet50", "imagenet2012"),
    Program(
        "resnet50 dssn s3.5 f32",
        "dssn",
        "resnet50",
        "imagenet2012",
        dtype="float32",
        sigma=3.5,
    ),
    Program(
        "resnet50 dssn s2 f32",
        "dssn",
        "resnet50",
        "imagenet2012",
        dtype="float32",
        sigma=2.0,
    ),
    Program(
        "resnet50 dssn s0.5 f32",
        "dssn",
        "resnet50",
        "imagenet2012",
        dtype="float32",
    ),
    # Fewer images per call than devices: each image's samples split.
    Program(
        "resnet50 dssn s3.5 bf16 batch 4",
        "dssn",
        "resnet50",
        "imagenet2012",
        sigma=3.5,
        batch=4,
    ),
    Program("wrn_40_2 dssn s0.5 bf16", "dssn", "wrn_40_2", "cifar10"),
    Program(
        "resnet50 uniform N=1e5 s0.5 bf16",
        "uniform",
        "resnet50",
        "imagenet2012",
    ),
    Program("wrn_40_2+dncnn dssn s0.5 bf16", "denoised", "wrn_40_2", "cifar10"),
    Program(
        "resnet50 train 1024",
        "train",
        "resnet50",
        "imagenet2012",
        global_batch=1024,
    ),
    Program(
        "resnet50 train 4096",
        "train",
        "resnet50",
        "imagenet2012",
        global_batch=4096,
    ),
    Program(
        "wrn_40_2 train 1024",
        "train",
        "wrn_40_2",
        "cifar10",
        global_batch=1024,
    ),
]
# The sweeps of docs/accelerators.md, "Accelerator defaults": compiled for
# the targets they name (--programs).
SWEEPS = (
    [
        # Two images per chip of a 4-chip host (against "batch 4", one).
        Program(
            "resnet50 dssn s3.5 bf16 batch 8",
            "dssn",
            "resnet50",
            "imagenet2012",
            sigma=3.5,
            batch=8,
        )
    ]
    + [
        # The forward-batch sweep of the accelerator defaults (docs/
        # accelerators.md): one image per chip, a chunk of this many of its
        # 3,091 noisy inputs per forward pass instead of the default's ~512.
        Program(
            f"resnet50 dssn s3.5 bf16 chunk {chunk}",
            "dssn",
            "resnet50",
            "imagenet2012",
            sigma=3.5,
            chunk_size=chunk,
        )
        for chunk in (128, 256, 1031, 1546)
    ]
    + [
        # The classifier's forward pass and argmax alone, at the DSSN program's
        # default forward batch per device (442 at sigma 3.5): what the vote
        # program's noise and counting cost on top of it.
        Program(
            "resnet50 forward 442 bf16",
            "forward",
            "resnet50",
            "imagenet2012",
            sigma=3.5,
            chunk_size=442,
        )
    ]
    + [
        # ResNet-50's first convolution alone, in the model's layout and in
        # space-to-depth (benchmarks/stem_layout.py), at the same forward
        # batch: what the input layout could gain.
        Program(
            f"resnet50 stem {layout} 442 bf16",
            "stem",
            "resnet50",
            "imagenet2012",
            sigma=3.5,
            chunk_size=442,
            layout=layout,
        )
        for layout in ("nhwc", "s2d", "s2d+transform")
    ]
)


@functools.cache
def forward_flops(model: str, dataset: str, dtype: str) -> float:
  """FLOPs of one image's forward pass, counted by the host CPU's XLA (the
  GPU compiler gives no cost analysis)."""
  from dssn_jax.runs import aot  # pylint: disable=g-import-not-at-top

  m = aot.classifier_model(model, dataset, dtype)
  cpu = jax.devices("cpu")[0]
  x = jax.ShapeDtypeStruct((8,) + m.input_shape, jnp.float32)
  with jax.default_device(cpu):
    cost = jax.jit(m.apply_fn).lower(m.variables, x).compile().cost_analysis()
  return cost["flops"] / 8


def _model(program: Program):
  from dssn_jax.runs import aot  # pylint: disable=g-import-not-at-top

  clf = aot.classifier_model(program.model, program.dataset, program.dtype)
  return aot.denoised_model(clf) if program.kind == "denoised" else clf


def _vote_row(program: Program, target, mesh) -> dict:
  """Certification: the full program (memory), one chunk (cost)."""
  from dssn_jax.runs import aot  # pylint: disable=g-import-not-at-top
  from dssn_jax.runtime import accelerators  # pylint: disable=g-import-not-at-top

  model = _model(program)
  devices = mesh.size
  batch = program.batch or devices
  if program.kind == "uniform":
    vote, args = aot.sample_program(
        model, program.sigma, batch, mesh, num_samples=program.num_samples
    )
  else:
    vote, args = aot.dssn_program(
        model, program.sigma, batch, mesh, chunk_size=program.chunk_size
    )
  full = aot.compile_vote_program(vote, args)
  body = aot.compile_vote_program(aot.one_chunk(vote, batch), args)
  chunks = aot.chunks_per_device(vote, batch)
  split = batch < devices
  rows = batch if split else -(-batch // devices)
  forward = rows * vote.chunk_size  # Noisy inputs per forward per device.
  model_flops = forward_flops(program.model, program.dataset, program.dtype)
  if program.kind == "denoised":
    model_flops = None  # The pair's FLOPs: from the compiler where it has them.
  chip = target.chip
  flops = body.flops
  if flops is None and model_flops is not None:
    flops = model_flops * forward  # Per device per chunk, the model alone.
  row = {
      "chunk_size": vote.chunk_size,
      "chunks_per_chip": chunks,
      "forward_batch_per_device": forward,
      "items_per_image": vote.num_items,
      "compile_seconds": full.compile_seconds,
      "device_bytes": full.device_bytes,
      "temp_bytes": full.temp_bytes,
      "flops_counted_by": "target" if body.flops else "host cpu (model)",
  }
  images = batch
  if flops:
    row["flops_per_image"] = flops * chunks * devices / images
    roofline = accelerators.roofline_seconds(
        flops * target.devices_per_chip,
        body.bytes_accessed and body.bytes_accessed * target.devices_per_chip,
        chip,
        program.dtype,
    )
    row["roofline_seconds_per_image_slice"] = roofline * chunks / images
  if body.optimal_seconds:
    row["compiler_seconds_per_image_slice"] = (
        body.optimal_seconds * chunks / images
    )
  if model_flops is not None:
    row["model_flops_per_image"] = model_flops * vote.num_items
  return row


def _forward_row(program: Program, target, mesh) -> dict:
  """The forward pass alone, chunk_size inputs per device, reported per
  image of the DSSN program at program.sigma (its L forward passes)."""
  from dssn_jax.runs import aot  # pylint: disable=g-import-not-at-top
  from dssn_jax.runtime import accelerators  # pylint: disable=g-import-not-at-top

  model = _model(program)
  sharded = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(mesh.axis_names)
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  x = jax.ShapeDtypeStruct(
      (program.chunk_size * mesh.size,) + model.input_shape,
      jnp.float32,
      sharding=sharded,
  )
  variables = jax.tree.map(
      lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated),
      model.variables,
  )
  forward = jax.jit(lambda v, b: jnp.argmax(model.apply_fn(v, b), axis=-1))
  step = aot.compile_lowered(forward.lower(variables, x))
  row, per_image = _per_image(program, target, step)
  model_flops = forward_flops(program.model, program.dataset, program.dtype)
  flops = step.flops or model_flops * program.chunk_size
  row["flops_counted_by"] = "target" if step.flops else "host cpu (model)"
  row["flops_per_image"] = flops * per_image
  row["model_flops_per_image"] = model_flops * row["items_per_image"]
  row["roofline_seconds_per_image_slice"] = (
      accelerators.roofline_seconds(
          flops * target.devices_per_chip,
          step.bytes_accessed and step.bytes_accessed * target.devices_per_chip,
          target.chip,
          program.dtype,
      )
      * per_image
      / target.chips
  )
  return row


def _per_image(program: Program, target, step) -> tuple[dict, float]:
  """The row of a program of program.chunk_size inputs per device, run
  once per chunk of the L inputs of one image of the DSSN program at
  program.sigma (one image per chip, as the vote programs: slice time =
  chip time / chips); and its runs per image."""
  from dssn_jax.core import smoothing  # pylint: disable=g-import-not-at-top

  levels = smoothing.SmoothingSpec(program.sigma, 255).levels
  per_image = levels / program.chunk_size  # Steps of one chip per image.
  row = {
      "forward_batch_per_device": program.chunk_size,
      "items_per_image": levels,
      "compile_seconds": step.compile_seconds,
      "device_bytes": step.device_bytes,
      "temp_bytes": step.temp_bytes,
  }
  if step.optimal_seconds:
    row["compiler_seconds_per_image_slice"] = (
        step.optimal_seconds * per_image / target.chips
    )
  return row, per_image


def _stem_row(program: Program, target, mesh) -> dict:
  """The stem convolution alone, reported like `_forward_row`."""
  from benchmarks import stem_layout  # pylint: disable=g-import-not-at-top

  step = stem_layout.stem_row(
      program.layout, program.chunk_size, mesh, program.dtype
  )
  row, per_image = _per_image(program, target, step)
  if step.flops:
    row["flops_counted_by"] = "target"
    row["flops_per_image"] = step.flops * per_image
  return row


def _train_row(program: Program, target, mesh) -> dict:
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from configs import imagenet  # pylint: disable=g-import-not-at-top
  from dssn_jax.runs import aot  # pylint: disable=g-import-not-at-top
  from dssn_jax.runtime import accelerators  # pylint: disable=g-import-not-at-top

  config = imagenet if program.dataset == "imagenet2012" else cifar10
  config = config.get_config()
  config.compute_dtype = program.dtype
  config.batch_size = program.global_batch
  step = aot.compile_train_step(config, mesh)
  # Training FLOPs of the model: forward + backward ~ 3 forward passes.
  model_flops = 3 * forward_flops(program.model, program.dataset, "bfloat16")
  flops = step.flops or model_flops * program.global_batch / mesh.size
  row = {
      "compile_seconds": step.compile_seconds,
      "device_bytes": step.device_bytes,
      "temp_bytes": step.temp_bytes,
      "flops_counted_by": "target" if step.flops else "host cpu (3x fwd)",
      "flops_per_image": flops * mesh.size / program.global_batch,
      "model_flops_per_image": model_flops,
      "roofline_seconds_per_image_slice": (
          accelerators.roofline_seconds(
              flops, step.bytes_accessed, target.chip, program.dtype
          )
          / program.global_batch
      ),
  }
  if step.optimal_seconds:
    row["compiler_seconds_per_image_slice"] = (
        step.optimal_seconds / program.global_batch
    )
  return row


def _base_row(program: Program, target) -> dict:
  return {
      "target": target.name,
      "program": program.name,
      "chips": target.chips,
      "devices": target.devices,
      "hbm_bytes": target.device_hbm_bytes,
      "batch": program.global_batch or program.batch or target.devices,
  }


def _crashed(program: Program, target, message: str) -> dict:
  return dict(_base_row(program, target), error=f"Crash: {message}")


def run_one(program: Program, target) -> dict:
  """One JSON line: the program compiled for the target, or its error."""
  from dssn_jax.core import placement  # pylint: disable=g-import-not-at-top
  from dssn_jax.runtime import accelerators  # pylint: disable=g-import-not-at-top

  row = _base_row(program, target)
  try:
    mesh = placement.make_mesh(accelerators.compile_only_devices(target))
    fn = {
        "train": _train_row,
        "forward": _forward_row,
        "stem": _stem_row,
    }.get(program.kind, _vote_row)
    row.update(fn(program, target, mesh))
  except Exception as e:  # pylint: disable=broad-except
    row["error"] = f"{type(e).__name__}: {e}"[:2000]
    row["traceback"] = traceback.format_exc()[-3000:]
  return row


def _done(path: str) -> set[tuple[str, str]]:
  if not os.path.exists(path):
    return set()
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {(r["target"], r["program"]) for r in rows}


def run_matrix(path: str, targets, programs) -> None:
  from dssn_jax.runtime import accelerators  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  if programs:
    by_name = {p.name: p for p in MATRIX + SWEEPS}
    unknown = sorted(set(programs) - set(by_name))
    if unknown:
      raise SystemExit(f"Unknown programs {unknown}; see benchmarks/aot.py.")
    chosen = [by_name[name] for name in programs]
  else:
    chosen = list(MATRIX)
  names = targets or list(accelerators.TARGETS)
  unknown = sorted(set(names) - set(accelerators.TARGETS))
  if unknown:
    raise SystemExit(
        f"Unknown targets {unknown}; choose from {list(accelerators.TARGETS)}."
    )
  for program in chosen:  # Program first: every target's memory early.
    for name in names:
      # Read before and after each compile: processes that share the file
      # (ALLOW_MULTIPLE_LIBTPU_LOAD) skip, and do not repeat, each other's
      # rows.
      if (name, program.name) in _done(path):
        continue
      target = accelerators.TARGETS[name]
      row = isolated.call(
          run_one,
          program,
          target,
          on_crash=functools.partial(_crashed, program, target),
      )
      if (name, program.name) in _done(path):
        continue
      row.update(versions())
      with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
      print(json.dumps({k: v for k, v in row.items() if k != "traceback"}))


@functools.cache
def versions() -> dict:
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  out = {}
  for package in ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin"):
    try:
      out[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      out[package] = None
  return out


def main(argv) -> None:
  del argv
  if _MARKDOWN.value:
    from benchmarks import aot_markdown  # pylint: disable=g-import-not-at-top

    print(aot_markdown.tables(_MARKDOWN.value, _PROGRAMS.value))
    return
  if os.environ.get("JAX_PLATFORMS") != "cpu":
    raise SystemExit(
        "Run with JAX_PLATFORMS=cpu and .venv-aot/bin/python (libtpu and the "
        "CUDA plugin must not look for chips); docs/accelerators.md."
    )
  # No xla_options.apply_defaults(): its options tune the CPU backend and
  # the accelerators' compilers take their own.
  run_matrix(_OUT.value, _TARGETS.value, _PROGRAMS.value)


if __name__ == "__main__":
  app.run(main)
