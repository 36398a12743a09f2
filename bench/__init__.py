"""Benchmarks: our server and flwr's, side by side, against the same load generator."""
