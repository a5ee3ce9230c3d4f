"""The deterministic synthetic world: scenes of coloured shapes, training data and 12 benchmarks (world.py)."""
