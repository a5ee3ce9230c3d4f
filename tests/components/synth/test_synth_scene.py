import io
from random import Random

import pytest
from PIL import Image

from components.synth.scene import (
    ASPECT_RANGE,
    COLORS,
    HEIGHT_RANGE,
    KINDS,
    LABELS,
    POSITIONS,
    WIDTH_RANGE,
    Scene,
    Shape,
    encode,
    label_layout,
    nearest_color,
    render,
    sample_scene,
)

SCENES = [sample_scene(Random(i)) for i in range(300)]


def test_scenes_are_non_square_and_within_the_documented_ranges():
    for scene in SCENES:
        assert WIDTH_RANGE[0] <= scene.width <= WIDTH_RANGE[1]
        assert HEIGHT_RANGE[0] <= scene.height <= HEIGHT_RANGE[1]
        assert scene.width != scene.height
        ratio = max(scene.width, scene.height) / min(scene.width, scene.height)
        assert ASPECT_RANGE[0] <= ratio <= ASPECT_RANGE[1]
    assert {len(s.shapes) for s in SCENES} == {1, 2, 3}
    assert any(s.height > s.width for s in SCENES) and any(s.width > s.height for s in SCENES)


def test_shapes_have_distinct_attributes_and_stay_in_their_quadrant():
    for scene in SCENES:
        for attr in ("color", "position", "label"):
            values = [getattr(s, attr) for s in scene.shapes]
            assert len(set(values)) == len(values)
        for s in scene.shapes:
            assert s.color in COLORS and s.kind in KINDS and s.label in LABELS and s.position in POSITIONS
            cx, cy = s.center
            half = s.size / 2
            left, top = s.position.endswith("left"), s.position.startswith("top")
            x0, x1 = (0, scene.width // 2) if left else (scene.width // 2, scene.width)
            y0, y1 = (0, scene.height // 2) if top else (scene.height // 2, scene.height)
            assert x0 <= cx - half and cx + half <= x1 and y0 <= cy - half and cy + half <= y1


def test_rendered_centre_pixel_is_the_shape_colour_in_png_and_jpeg():
    for scene in SCENES[:60]:
        image = render(scene)
        for s in scene.shapes:
            assert image.getpixel(s.center) == COLORS[s.color], "the label must not cover the centre"
        for fmt in ("png", "jpeg"):
            decoded = Image.open(io.BytesIO(encode(image, fmt))).convert("RGB")
            assert decoded.size == (scene.width, scene.height)
            for s in scene.shapes:
                assert nearest_color(decoded.getpixel(s.center)) == s.color


def test_label_is_drawn_below_the_centre_inside_the_shape():
    scene = Scene(
        140, 100, (128, 128, 128), (Shape("yellow", "triangle", "top left", "fox", (35, 25), 30),), "png"
    )
    px, x, y = label_layout(scene.shapes[0])
    assert y > 0 and 6 <= px <= 10
    image = render(scene)
    # The label's ink (black on yellow) appears only in the lower half of the shape.
    ink = [
        (i, j)
        for i in range(20, 51)
        for j in range(10, 41)
        if image.getpixel((i, j)) != COLORS["yellow"] and image.getpixel((i, j)) != (128, 128, 128)
    ]
    assert ink and all(j > 25 for _, j in ink)


@pytest.mark.parametrize("kind", KINDS)
def test_every_label_fits_the_smallest_shape(kind):
    smallest = int(0.66 * min(WIDTH_RANGE[0], HEIGHT_RANGE[0]) / 2)
    for label in LABELS:
        label_layout(Shape("red", kind, "top left", label, (40, 40), smallest))


def test_encoding_is_deterministic_and_pinned():
    image = render(SCENES[0])
    assert encode(image, "jpeg") == encode(image, "jpeg")
    assert encode(image, "png") == encode(image, "png")
    assert Image.open(io.BytesIO(encode(image, "jpeg"))).format == "JPEG"
    with pytest.raises(ValueError, match="unknown image format 'gif'"):
        encode(image, "gif")  # type: ignore[arg-type]


def test_same_rng_state_gives_the_same_scene():
    assert sample_scene(Random(7)) == sample_scene(Random(7))
    assert sample_scene(Random(7)) != sample_scene(Random(8))


def test_bad_shape_count_is_rejected():
    with pytest.raises(ValueError, match="n_shapes must be in 1..3"):
        sample_scene(Random(0), n_shapes=4)
