"""Benchmarks of the engine (execution-based HumanEval-Infilling)."""
