"""A tiny synthetic world generated once per session (the `world` fixture), with readers for its files."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from components.synth.scene import nearest_color
from components.synth.world import generate_world


@dataclass(frozen=True)
class World:
    root: Path
    manifest: dict[str, Any]
    wall_s: float
    cpu_s: float

    def eval(self, folder: str) -> Path:
        return self.root / "eval" / folder

    @staticmethod
    def jsonl(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    @staticmethod
    def json(path: Path) -> Any:
        return json.loads(path.read_text(encoding="utf-8"))

    @cached_property
    def scenes(self) -> dict[str, dict[str, Any]]:
        """Scene metadata by image path relative to the world root."""
        return {s["image"]: s for s in self.jsonl(self.root / "scenes.jsonl")}

    def pixel_colors(self, rel: str) -> dict[str, str]:
        """position -> palette colour read from the decoded image at each shape's recorded centre."""
        scene = self.scenes[rel]
        with Image.open(self.root / rel) as im:
            rgb = im.convert("RGB")
            return {s["position"]: nearest_color(rgb.getpixel(tuple(s["center"]))) for s in scene["shapes"]}


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    out = tmp_path_factory.mktemp("world") / "synth"
    wall, cpu = time.perf_counter(), time.process_time()
    manifest = generate_world(out, seed=0, size="tiny")
    return World(out, manifest, time.perf_counter() - wall, time.process_time() - cpu)
