"""Stand-ins for tests, benchmarks and smoke runs: byte-level token data and a tiny random HF model.

No stage imports this package; it lives in the library (not under ``tests/``) because the benchmarks use it.
"""
