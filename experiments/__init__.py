"""Thin absl entry points (train, certify, analyze, benchmark): `python -m experiments.X`."""
