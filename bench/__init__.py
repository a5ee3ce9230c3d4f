"""Benchmarks: our pipeline's pieces against a baseline run side by side (preprocess, generate, train)."""
