"""Synthetic sensor data for tests, replays and benchmarks."""
