"""Scenes of the synthetic world: sampling, rendering and deterministic encoding.

A scene is a grey-ish, non-square canvas with 1-3 shapes, each alone in one quadrant, so every
attribute a question asks about (colour, quadrant, presence, count) is carried by a few patches even
at 56 px. Each shape carries a short label drawn below its centre, small enough to be legible at the
native size and at 84 px, but not at 56 px; the centre pixel always shows the shape's own colour.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from random import Random
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

# Saturated colours far apart in RGB, so a patch mean identifies them after JPEG and resizing.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 205, 215),
    "pink": (245, 120, 190),
}
KINDS: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
LABELS: tuple[str, ...] = tuple("4 5 6 7 8 9 go hi ox fox sun cat map pen zip bus".split())
WIDTH_RANGE = (96, 160)
HEIGHT_RANGE = (72, 128)
ASPECT_RANGE = (
    1.15,
    1.6,
)  # long side / short side: never square, never so long that a centre crop loses a cell
MAX_SHAPES = 3
JPEG_QUALITY = 90
PNG_FRACTION = 0.15
LABEL_FONT_PX = (10, 6)  # largest size tried first; the first that fits the shape is used

ImageFormat = Literal["jpeg", "png"]
EXTENSIONS: dict[str, str] = {"jpeg": "jpg", "png": "png"}


@dataclass(frozen=True)
class Shape:
    color: str
    kind: str
    position: str
    label: str
    center: tuple[int, int]
    size: int  # side of the bounding square, px

    def to_dict(self) -> dict[str, object]:
        return {
            "color": self.color,
            "kind": self.kind,
            "position": self.position,
            "label": self.label,
            "center": list(self.center),
            "size": self.size,
        }


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]
    fmt: ImageFormat

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.fmt]

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(s.color for s in self.shapes)

    def at(self, position: str) -> Shape | None:
        return next((s for s in self.shapes if s.position == position), None)

    def of_color(self, color: str) -> Shape | None:
        return next((s for s in self.shapes if s.color == color), None)

    def to_dict(self) -> dict[str, object]:
        return {
            "width": self.width,
            "height": self.height,
            "background": list(self.background),
            "format": self.fmt,
            "shapes": [s.to_dict() for s in self.shapes],
        }


def _canvas_size(rng: Random) -> tuple[int, int]:
    while True:
        w, h = rng.randint(*WIDTH_RANGE), rng.randint(*HEIGHT_RANGE)
        if ASPECT_RANGE[0] <= max(w, h) / min(w, h) <= ASPECT_RANGE[1]:
            return w, h


def _cell(position: str, w: int, h: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a quadrant."""
    top, left = position.startswith("top"), position.endswith("left")
    x0, y0 = (0 if left else w // 2), (0 if top else h // 2)
    return x0, y0, (w // 2 if left else w), (h // 2 if top else h)


def sample_scene(
    rng: Random,
    *,
    n_shapes: int | None = None,
    min_shapes: int = 1,
    fmt: ImageFormat | None = None,
) -> Scene:
    """A random scene; colours, quadrants and labels are distinct within it so references are unique."""
    n = n_shapes if n_shapes is not None else rng.randint(min_shapes, MAX_SHAPES)
    if not 1 <= n <= MAX_SHAPES:
        raise ValueError(f"n_shapes must be in 1..{MAX_SHAPES}, got {n}")
    w, h = _canvas_size(rng)
    grey = rng.randint(105, 165)
    background = tuple(min(255, max(0, grey + rng.randint(-10, 10))) for _ in range(3))
    colors = rng.sample(list(COLORS), n)
    positions = rng.sample(POSITIONS, n)
    labels = rng.sample(LABELS, n)
    shapes = []
    for color, position, label in zip(colors, positions, labels, strict=True):
        x0, y0, x1, y1 = _cell(position, w, h)
        size = int(rng.uniform(0.66, 0.86) * min(x1 - x0, y1 - y0))
        half, margin = size // 2, 2
        cx = rng.randint(x0 + half + margin, x1 - half - margin - 1)
        cy = rng.randint(y0 + half + margin, y1 - half - margin - 1)
        shapes.append(Shape(color, rng.choice(KINDS), position, label, (cx, cy), size))
    # Fixed order (reading order) so captions and metadata do not depend on sampling order.
    shapes.sort(key=lambda s: POSITIONS.index(s.position))
    chosen_fmt: ImageFormat = fmt or ("png" if rng.random() < PNG_FRACTION else "jpeg")
    return Scene(w, h, background, tuple(shapes), chosen_fmt)  # type: ignore[arg-type]


# ---------------------------------------------------------------- rendering


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: no system font lookup, so the glyphs are the same on every machine.
    return ImageFont.load_default(size=px)


def _inside(shape: Shape, x: float, y: float) -> bool:
    cx, cy = shape.center
    half = shape.size / 2
    if shape.kind == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= (half - 1) ** 2
    if shape.kind == "square":
        return abs(x - cx) <= half - 1 and abs(y - cy) <= half - 1
    # Upward triangle: apex at the top centre, base along the bottom edge.
    top, bottom = cy - half, cy + half
    if not top <= y <= bottom - 1:
        return False
    return abs(x - cx) <= (y - top) / 2 - 1


def _triangle(shape: Shape) -> list[tuple[float, float]]:
    cx, cy = shape.center
    half = shape.size / 2
    return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]


def label_layout(shape: Shape) -> tuple[int, int, int]:
    """(font px, x, y) of the label: the largest font whose box fits inside the shape below its centre."""
    cx, cy = shape.center
    for px in range(LABEL_FONT_PX[0], LABEL_FONT_PX[1] - 1, -1):
        left, top, right, bottom = _font(px).getbbox(shape.label)
        tw, th = right - left, bottom - top
        x = cx - tw // 2
        for y in range(cy + 2, cy + shape.size // 2):
            corners = ((x, y), (x + tw, y), (x, y + th), (x + tw, y + th))
            if all(_inside(shape, a, b) for a, b in corners):
                return px, x - left, y - top
    raise ValueError(f"label {shape.label!r} does not fit a {shape.size}px {shape.kind}")


def _ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image (a pure function of the scene)."""
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        fill = COLORS[shape.color]
        cx, cy = shape.center
        half = shape.size // 2
        box = (cx - half, cy - half, cx - half + shape.size - 1, cy - half + shape.size - 1)
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(_triangle(shape), fill=fill)
        px, x, y = label_layout(shape)
        draw.text((x, y), shape.label, fill=_ink(fill), font=_font(px))
    return image


def encode(image: Image.Image, fmt: ImageFormat) -> bytes:
    """Encoded bytes with every encoder setting pinned, so the same pixels give the same file."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        # 4:4:4 keeps the chroma of small shapes and labels; no optimize/progressive passes.
        image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False, progressive=False)
    elif fmt == "png":
        image.save(buf, format="PNG", compress_level=6, optimize=False)
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected 'jpeg' or 'png'")
    return buf.getvalue()


def nearest_color(rgb: tuple[int, int, int]) -> str:
    """The palette colour closest to a pixel (used to check rendered images against their answers)."""
    return min(COLORS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLORS[name], rgb, strict=True)))
