"""Measurements of dssn-jax against itself and its peers (not the library).

Run each module with `python -m benchmarks.<module> --help`.
"""
