"""Benchmarks: ``python -m demos.bench {actors,...}``.

Each benchmark measures featurist and, in the same run, a baseline doing the same work with no
framework, and prints the ratio. Figures from one machine are only comparable within one run.
"""
