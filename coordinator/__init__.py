"""Coordinator: deploys, inspects and benchmarks pipelines; runs the scheduler."""
