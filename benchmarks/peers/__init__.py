"""Shared pieces of the peer benchmarks (``benchmarks/*_peers.py``): the peers' venv, measured subprocesses,
the dedup input with known clusters and its scoring, shingles as strings for the peers, and phase profiles."""
