"""Simulated node hardware and surroundings for tests, benchmarks and the demo."""
