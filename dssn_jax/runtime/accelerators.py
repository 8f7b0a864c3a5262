"""Accelerators the programs are compiled for without having one.

A `Target` is a slice of one chip kind: a TPU topology ("v5p:2x2x1") or
a number of GPUs on one host. `compile_only_devices` makes its devices with
`jax.experimental.topologies.get_topology_desc`: devices that XLA compiles
for (placing and sharding over a `Mesh` as on the real chips) but that run
nothing, so a machine without the accelerator compiles the exact program
the accelerator would run. TPU targets need libtpu, GPU targets the CUDA
PJRT plugin (`jax[tpu]`, `jax-cuda12-plugin`; setup.sh installs both in a
separate virtualenv, docs/accelerators.md), and the process must run with
JAX_PLATFORMS=cpu so that neither tries to open a chip.

A GPU is described to XLA by a `GpuTargetConfigProto` (text format); the
fields written here are the few the compiler reads, with the values XLA
publishes for these chips (openxla/xla, xla/backends/gpu/target_config/
specs/, Apache-2.0). The peak FLOP/s, memory sizes and bandwidths are the
vendors' published per-chip figures (dense, no sparsity); they are what the
roofline bound (`roofline_seconds`) divides by, an estimate, not a
measurement.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published facts of one accelerator chip.

  Attributes:
    name: the chip, e.g. "TPU v5p" or "NVIDIA H100 80GB".
    platform: "tpu" or "cuda".
    hbm_bytes: memory per chip in bytes.
    bfloat16_flops: dense peak bfloat16 FLOP/s per chip.
    float32_flops: what a float32 matmul runs at by default: bfloat16
      passes on the TPU's matrix unit, TF32 on the GPUs' tensor cores.
    hbm_bandwidth: memory bandwidth in bytes/s.
    gpu_config: for GPUs, the GpuTargetConfigProto fields (text format)
      beyond those common to the NVIDIA chips here.
  """

  name: str
  platform: str
  hbm_bytes: int
  bfloat16_flops: float
  float32_flops: float
  hbm_bandwidth: float
  gpu_config: str = ""

  def peak_flops(self, dtype: str) -> float:
    """Dense peak FLOP/s for a compute dtype ("bfloat16" or "float32")."""
    return {"bfloat16": self.bfloat16_flops, "float32": self.float32_flops}[
        dtype
    ]


# Cloud TPU documentation, "System architecture" per version (per chip: HBM
# capacity, bandwidth, peak bfloat16 compute). A float32 matmul runs as
# bfloat16 passes on the matrix unit at the default precision, so the
# bfloat16 peak bounds both.
TPU_V4 = Chip("TPU v4", "tpu", 32 * GIB, 275e12, 275e12, 1228e9)
TPU_V5E = Chip("TPU v5e", "tpu", 16 * GIB, 197e12, 197e12, 819e9)
TPU_V5P = Chip("TPU v5p", "tpu", 95 * GIB, 459e12, 459e12, 2765e9)
TPU_V6E = Chip("TPU v6e", "tpu", 32 * GIB, 918e12, 918e12, 1640e9)

# NVIDIA data sheets (SXM parts, dense tensor-core peaks; float32 = TF32,
# which XLA uses for float32 convolutions and matmuls by default). Memory
# sizes as the CUDA driver reports them (XLA's published target configs).
A100_80GB = Chip(
    "NVIDIA A100-SXM4-80GB",
    "cuda",
    85100068864,
    312e12,
    156e12,
    2039e9,
    gpu_config="""core_count: 108 fpus_per_core: 64
    shared_memory_per_core: 167936 shared_memory_per_block_optin: 166912
    l2_cache_size: 41943040 clock_rate_ghz: 1.41
    cuda_compute_capability { major: 8 minor: 0 }""",
)
H100_80GB = Chip(
    "NVIDIA H100 80GB HBM3",
    "cuda",
    84942979072,
    989e12,
    495e12,
    3352e9,
    gpu_config="""core_count: 132 fpus_per_core: 128
    shared_memory_per_core: 233472 shared_memory_per_block_optin: 232448
    l2_cache_size: 52428800 clock_rate_ghz: 1.98
    cuda_compute_capability { major: 9 minor: 0 }""",
)
B200 = Chip(
    "NVIDIA B200",
    "cuda",
    191514411008,
    2250e12,
    1100e12,
    7672e9,
    gpu_config="""core_count: 148 fpus_per_core: 128
    shared_memory_per_core: 233472 shared_memory_per_block_optin: 232448
    l2_cache_size: 132644864 clock_rate_ghz: 1.965
    cuda_compute_capability { major: 10 minor: 0 }""",
)


@dataclasses.dataclass(frozen=True)
class Target:
  """A slice of one chip kind to compile for.

  Attributes:
    name: e.g. "v5p-8" (Cloud TPU's name: TensorCores for v4 and v5p,
      chips for v5e and v6e) or "8x H100".
    chip: the chip.
    topology: TPU: the topology string of `get_topology_desc` ("v5p:2x2x1");
      GPU: "1x1x<n>" (one host with n GPUs).
    chips: chips in the slice.
    devices_per_chip: JAX devices per chip: 2 for TPU v4, whose compile-only
      topology has one device per TensorCore (each with half the chip's
      memory and peak); 1 for the others.
  """

  name: str
  chip: Chip
  topology: str
  chips: int
  devices_per_chip: int = 1

  @property
  def devices(self) -> int:
    """JAX devices of the slice."""
    return self.chips * self.devices_per_chip

  @property
  def device_hbm_bytes(self) -> int:
    """Memory of one JAX device."""
    return self.chip.hbm_bytes // self.devices_per_chip


TARGETS = {
    t.name: t
    for t in (
        Target("v4-8", TPU_V4, "v4:2x2x1", 4, devices_per_chip=2),
        Target("v5e-8", TPU_V5E, "v5e:2x4", 8),
        Target("v5p-8", TPU_V5P, "v5p:2x2x1", 4),
        Target("v6e-8", TPU_V6E, "v6e:2x4", 8),
        Target("v5e-256", TPU_V5E, "v5e:16x16", 256),
        Target("1x A100", A100_80GB, "1x1x1", 1),
        Target("8x A100", A100_80GB, "1x1x8", 8),
        Target("1x H100", H100_80GB, "1x1x1", 1),
        Target("8x H100", H100_80GB, "1x1x8", 8),
        Target("1x B200", B200, "1x1x1", 1),
        Target("8x B200", B200, "1x1x8", 8),
    )
}


def gpu_target_config(chip: Chip) -> str:
  """The GpuTargetConfigProto (text format) XLA compiles for a GPU chip."""
  if chip.platform != "cuda":
    raise ValueError(f"{chip.name} is not a CUDA GPU.")
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32
  shared_memory_per_block: 49152 threads_per_core_limit: 2048
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  memory_bandwidth: {int(chip.hbm_bandwidth)}
  device_memory_size: {chip.hbm_bytes}
  {chip.gpu_config}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{chip.name}"
"""


@functools.cache
def compile_only_devices(target: Target) -> tuple[jax.Device, ...]:
  """The target's compile-only JAX devices (`Target.devices` of them).

  Raises:
    RuntimeError: the compiler for the platform is not installed (libtpu
      for TPUs, jax-cuda12-plugin for GPUs), or the process may open a real
      chip (run it with JAX_PLATFORMS=cpu).
  """
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    if target.chip.platform == "tpu":
      topology = topologies.get_topology_desc(target.topology, "tpu")
    else:
      topology = topologies.get_topology_desc(
          platform="cuda",
          target_config=gpu_target_config(target.chip),
          topology=target.topology,
      )
  except Exception as e:  # pylint: disable=broad-except
    package = (
        "jax[tpu]"
        if target.chip.platform == "tpu"
        else ("jax-cuda12-plugin and jax-cuda12-pjrt")
    )
    raise RuntimeError(
        f"No compile-only devices for {target.name} ({e}). Install "
        f"{package} at jax's version (setup.sh builds .venv-aot with them; "
        f"docs/accelerators.md) and run with JAX_PLATFORMS=cpu."
    ) from e
  devices = tuple(topology.devices)
  if len(devices) != target.devices:
    raise RuntimeError(
        f"{target.name}: topology {target.topology} gave {len(devices)} "
        f"devices, expected {target.devices}."
    )
  return devices


def roofline_seconds(
    flops: float, bytes_accessed: float | None, chip: Chip, dtype: str
) -> float:
  """A lower bound on the time of a program on one chip: its FLOPs at the
  chip's peak for dtype, or its memory traffic at full bandwidth, whichever
  takes longer (bytes_accessed None: FLOPs only). An estimate from
  published peaks; real programs run slower."""
  seconds = flops / chip.peak_flops(dtype)
  if bytes_accessed:
    seconds = max(seconds, bytes_accessed / chip.hbm_bandwidth)
  return seconds
