"""Sweeps: a grid of runs from a YAML file, run by a local process pool or Ray, into one results table."""
