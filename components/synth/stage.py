"""The `synth` stage: the synthetic world (images, LLaVA-format conversations, eval sets) in its output."""

from __future__ import annotations

import tempfile
from typing import Any, Literal

from components.core import storage
from components.core.stage_run import StageRun


def run_synth(*, size: Literal["micro", "tiny", "small", "medium"], seed: int, run: StageRun) -> dict[str, Any]:
    """Generate the world into the stage's output (local, or generated locally and uploaded)."""
    from .world import generate_world

    if not storage.is_remote(run.out):
        return {"files": len(generate_world(run.out, seed=seed, size=size)["files"])}
    with tempfile.TemporaryDirectory() as tmp:
        files = len(generate_world(tmp, seed=seed, size=size)["files"])
        storage.upload_dir(tmp, run.out)
    return {"files": files}
