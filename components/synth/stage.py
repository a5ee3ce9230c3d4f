"""The `synth` stage: the synthetic world (images, LLaVA-format conversations, eval sets) in `out`."""

from __future__ import annotations

import tempfile

from components.core import storage

from .world import generate_world


def run_synth(out: str, *, seed: int, size: str) -> int:
    """Generate the world into `out` (local, or generated locally and uploaded); the number of files."""
    if not storage.is_remote(out):
        return len(generate_world(out, seed=seed, size=size)["files"])
    with tempfile.TemporaryDirectory() as tmp:
        files = len(generate_world(tmp, seed=seed, size=size)["files"])
        storage.upload_dir(tmp, out)
    return files
