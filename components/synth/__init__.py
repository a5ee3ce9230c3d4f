"""The deterministic synthetic world: scenes of coloured shapes, training data and 12 benchmarks."""

from components.synth.world import generate_world

__all__ = ["generate_world"]
