"""Benchmarks of dssn-jax, outside the library: `python -m benchmarks.X`.

run              entry point: the certifier benchmark of configs/benchmark.py
certifier        its sections (peak, models, training, device split), report
measure          timing protocol, statistics, test subjects, compiled costs
tuning           forward-batch sweep and XLA_FLAGS trials
flag_trial       one XLA_FLAGS trial (a fresh process per setting)
device_split     the work split over fake CPU devices (a fresh process)
time_certifiers  entry point: seconds per image of a study's certifiers
torch_models     the authors' PyTorch networks, for the peer and the tests
torch_peer       a PyTorch eager certifier of the same network, side by side
cpu_defaults     what the CPU defaults rest on: flags, forward batch, bfloat16
train_ratio      train_and_evaluate images/s over the jitted train step alone
early_exit       early-exit DSSN and sequential uniform against full runs
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
from dssn_jax.runtime import xla_options

# As the entry points of experiments/ do: the CPU's XLA options before any
# JAX backend starts (importing dssn_jax leaves the process alone).
xla_options.apply_defaults()
