r"""Benchmark of the certifier against this machine's own limits.

  python -m benchmarks.run --config=configs/benchmark.py \
      --workdir=runs/benchmark

writes `benchmark.json` and `benchmark.md` into --workdir: the float32 (and
bfloat16) matmul peak; per model (small CNN 28x28x1, WRN-40-2 32x32x3,
ResNet-50 224x224x3) FLOPs per forward, raw forward and certification
throughput at sigma 0.5 and 3.5, their ratio, model FLOP utilization, peak
memory; training step throughput; the work split over fake CPU devices. See
benchmarks/certifier.py for what is timed. XLA options for a trial go through
the environment, e.g. `XLA_FLAGS=--xla_cpu_... python -m benchmarks.run`,
and are recorded in the report.

Variants: `configs/benchmark.py:smoke` (small CNN only, tiny sizes; seconds,
for tests), `configs/benchmark.py:cpu_quick` (no ResNet-50, fewer rounds).
"""

import ml_collections

# Lets XLA:CPU hand BatchNorm, ReLU, residual adds and pooling to the same
# YNNPACK fusions as the convolutions (an xla_cpu_* option: no effect on GPU or
# TPU). It changes the low bits of the logits; see docs/performance.md.
CPU_FUSION_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce"


def _model_settings() -> ml_collections.ConfigDict:
  """Per-model overrides of images, chunk_size, timed_chunks, train_batch and
  repeats (a missing field or -1 inherits the top-level value)."""
  return ml_collections.ConfigDict(
      {
          "small_cnn": {
              "images": 16,
              "train_batch": 128,
              "timed_chunks": 6,
              "repeats": 9,
          },
          "wrn_40_2": {
              "images": 32,
              "train_batch": 64,
              "repeats": 3,
              "timed_chunks": 2,
          },
          # One ResNet-50 forward is ~8 GFLOP: on a CPU, time chunks of 8
          # samples (forward batch 32; automatic: 124, i.e. 496) and 2 rounds.
          "resnet50": {
              "images": 4,
              "chunk_size": 8,
              "train_batch": 8,
              "repeats": 2,
              "timed_chunks": 2,
          },
      }
  )


def _train_config() -> ml_collections.ConfigDict:
  """The training step timed by benchmark_training (DSSN noise, SGD)."""
  return ml_collections.ConfigDict(
      {
          "noise": "dssn",
          "sigma": 0.5,
          "q": 255,
          "stability": False,
          "stability_gamma": 6.0,
          "learning_rate": 0.1,
          "momentum": 0.9,
          "nesterov": True,
          "weight_decay": 1e-4,
      }
  )


def _add_tuning(config: ml_collections.ConfigDict) -> None:
  """The tuning trials (benchmarks/tuning.py), the PyTorch peer and the
  profile."""
  # Raw forward throughput per forward batch size (the evidence for
  # chunking.DEFAULT_FORWARD_BATCH):
  config.sweep = ml_collections.ConfigDict(
      {
          "small_cnn": (64, 128, 256, 512, 1024, 2048),
          "wrn_40_2": (32, 64, 128, 256, 512, 1024),
      }
  )
  # XLA_FLAGS settings, each in fresh subprocesses, alternated; the first is
  # the baseline of the ratios.
  config.flag_trials = ("", CPU_FUSION_FLAGS)
  config.flag_trial_models = (("small_cnn", 512), ("wrn_40_2", 256))
  config.flag_trial_alternations = 2
  # The PyTorch eager certifier of the same WRN-40-2 side by side
  # (benchmarks/torch_peer.py) at config.sigmas; {} skips it. Skipped with a
  # message when torch is not installed.
  config.torch_peer = ml_collections.ConfigDict(
      {"images": 2, "rounds": 3, "noise_batch": 128}
  )
  # Trace one certification call per model into workdir/profile and break
  # its time down by XLA operation.
  config.profile = True


def _full() -> ml_collections.ConfigDict:
  """The full benchmark: every section, every model."""
  config = ml_collections.ConfigDict()
  config.models = ("small_cnn", "wrn_40_2", "resnet50")
  config.train_models = ("small_cnn", "wrn_40_2", "resnet50")
  # bfloat16 rows (where the backend has bfloat16 convolutions) for these.
  config.compute_dtypes = ("float32", "bfloat16")
  config.reduced_precision_models = ("small_cnn", "wrn_40_2")
  config.sigmas = (0.5, 3.5)
  config.q = 255
  config.repeats = 5  # Timed rounds (after warm-up) per measurement.
  config.warmup = 1
  config.peak_sizes = (1024, 2048, 4096)  # Square matmuls of the peak table.
  config.peak_size = 2048  # The matmul interleaved with every measurement.
  # Per-model overrides; -1 inherits the top-level value (or automatic).
  config.images = 32  # Images per certification batch (configs' default).
  config.chunk_size = -1  # -1: what dssn_counts picks.
  config.timed_chunks = 3  # Chunks of noise samples timed per call.
  config.train_batch = 64
  config.model_settings = _model_settings()
  # "model:dtype" pairs also timed as one full dssn_counts call (first sigma).
  config.end_to_end = ("small_cnn:float32",)
  config.end_to_end_repeats = 2
  # Every model: full dssn_counts calls at this sigma (L = 8) measure the
  # host's share of a call.
  config.host_sigma = 0.01
  config.train = _train_config()
  config.split_devices = (4,)  # Fake CPU device counts to check; () skips.
  # Appended to XLA_FLAGS by benchmarks/run.py before JAX starts. ""
  # measures what the other entry points get by default (which includes
  # dssn_jax.runtime.xla_options.DEFAULT_FLAGS unless DSSN_JAX_XLA_DEFAULTS=0).
  config.xla_flags = ""
  _add_tuning(config)
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  """The small CNN only, at tiny sizes: seconds, for tests."""
  config.models = ("small_cnn",)
  config.train_models = ("small_cnn",)
  config.compute_dtypes = ("float32",)
  config.sigmas = (0.05, 0.1)  # L = 44 and 88.
  config.repeats = 2
  config.peak_sizes = (256,)
  config.peak_size = 256
  config.model_settings = ml_collections.ConfigDict(
      {
          "small_cnn": {
              "images": 2,
              "chunk_size": 8,
              "timed_chunks": 2,
              "train_batch": 8,
          }
      }
  )
  config.end_to_end = ("small_cnn:float32",)
  config.end_to_end_repeats = 1
  config.split_devices = ()
  config.profile = False
  config.sweep = ml_collections.ConfigDict({"small_cnn": (8, 16)})
  config.flag_trials = ()
  config.torch_peer = ml_collections.ConfigDict()


def _cpu_quick(config: ml_collections.ConfigDict) -> None:
  """No ResNet-50, fewer rounds, a shorter sweep."""
  config.models = ("small_cnn", "wrn_40_2")
  config.train_models = ("small_cnn", "wrn_40_2")
  config.repeats = 3
  config.sweep = ml_collections.ConfigDict(
      {"small_cnn": (128, 256, 512, 1024), "wrn_40_2": (64, 128, 256, 512)}
  )


_VARIANTS = {"smoke": _smoke, "cpu_quick": _cpu_quick}


def get_config(arg: str | None = None):
  """The full benchmark, or the variant `arg` names ('smoke', 'cpu_quick')."""
  config = _full()
  if arg:
    if arg not in _VARIANTS:
      raise ValueError(
          f"Unknown variant {arg!r} of benchmark; use 'smoke' or 'cpu_quick'."
      )
    _VARIANTS[arg](config)
  return config
