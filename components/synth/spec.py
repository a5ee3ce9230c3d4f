"""`data.synth:` the synthetic world of the embedded default; `{synth}` in a path points at its folder."""

from __future__ import annotations

from typing import Literal

from components.core.config import Strict


class SynthConfig(Strict):
    size: Literal["micro", "tiny", "small", "medium"] = "tiny"  # micro: smoke tests (mechanics, not learning)
    seed: int = 0
