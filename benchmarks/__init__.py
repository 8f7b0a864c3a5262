"""Benchmarks of dssn-jax, outside the library: `python -m benchmarks.X`.

run              entry point: the certifier benchmark of configs/benchmark.py
certifier        its sections (peak, models, training, device split), report
measure          timing protocol, statistics, test subjects, compiled costs
tuning           forward-batch sweep and XLA_FLAGS trials
flag_trial       one XLA_FLAGS trial (a fresh process per setting)
device_split     the work split over fake CPU devices (a fresh process)
time_certifiers  entry point: seconds per image of a study's certifiers
"""
