import io
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import CLIPImageProcessorPil

from components.core.images import (
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOR,
    ImageError,
    blank_pixels,
    check_image_bytes,
    decode_image,
    expand_to_square,
    image_size,
    normalize,
    pixel_values,
    resize_shortest_center_crop,
    transform_image,
)

WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def px(img: Image.Image, x: int, y: int) -> tuple[int, ...]:
    assert img.mode == "RGB"
    return img.getpixel((x, y))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w×h but that carries no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- modes


def test_rgba_transparent_areas_composite_over_white():
    arr = np.zeros((4, 4, 4), np.uint8)  # fully transparent black everywhere
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (255, 0, 0, 128)  # half-transparent red
    out = decode_image(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    assert out.mode == "RGB"
    assert px(out, 0, 0) == (255, 0, 0)
    assert px(out, 3, 3) == WHITE  # a plain convert("RGB") would give black here
    r, g, b = px(out, 1, 0)
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_la_composites_over_white():
    arr = np.zeros((2, 2, 2), np.uint8)
    arr[0, 0] = (10, 255)
    out = decode_image(encode(Image.fromarray(arr, "LA"), "PNG"))
    assert px(out, 0, 0) == (10, 10, 10)
    assert px(out, 1, 1) == WHITE


def palette_image() -> Image.Image:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    return img


def test_palette_without_transparency():
    out = decode_image(encode(palette_image(), "PNG"))
    assert [px(out, x, 0) for x in range(3)] == [(0, 0, 0), (255, 0, 0), (0, 0, 255)]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composites_over_white(fmt):
    out = decode_image(encode(palette_image(), fmt, transparency=0))
    assert px(out, 0, 0) == WHITE  # index 0 is transparent (black underneath)
    assert px(out, 1, 0) == (255, 0, 0)


def test_rgb_with_transparent_colour_key():
    img = Image.new("RGB", (2, 2), (1, 2, 3))
    img.putpixel((0, 0), (9, 9, 9))
    out = decode_image(encode(img, "PNG", transparency=(1, 2, 3)))
    assert px(out, 1, 1) == WHITE
    assert px(out, 0, 0) == (9, 9, 9)


def test_grey_and_bilevel():
    grey = decode_image(encode(Image.new("L", (2, 2), 77), "PNG"))
    assert px(grey, 0, 0) == (77, 77, 77)
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    out = decode_image(encode(bits, "PNG"))
    assert px(out, 0, 0) == (0, 0, 0) and px(out, 1, 0) == WHITE


def test_cmyk_jpeg_converts_to_rgb():
    colour = (200, 50, 30)
    cmyk = Image.new("RGB", (16, 16), colour).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.mode == "RGB"
    assert np.abs(np.array(px(out, 8, 8)) - colour).max() <= 3


GRADIENT_16 = np.linspace(0, 65535, 4 * 257).astype(np.uint16).reshape(4, 257)


@pytest.mark.parametrize(
    ("fmt", "arr"),
    [("PNG", GRADIENT_16), ("TIFF", GRADIENT_16.astype(">u2")), ("TIFF", GRADIENT_16.astype(np.int32))],
    ids=["I;16-png", "I;16B-tiff", "I-tiff"],
)
def test_sixteen_bit_scales_full_range(fmt, arr):
    src = Image.fromarray(arr)
    data = encode(src, fmt)
    assert Image.open(io.BytesIO(data)).mode == src.mode
    out = np.array(decode_image(data))
    expected = np.rint(GRADIENT_16 / 257).astype(np.uint8)  # 65535 -> 255, not clipped at 255
    assert np.array_equal(out[..., 0], expected)
    assert np.array_equal(out[..., 0], out[..., 2])
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) == 256  # Pillow's own convert("L") clips: nearly everything is 255


def test_int32_outside_16_bit_range_is_stretched():
    arr = np.array([[-1000, 0, 1000]], np.int32)
    out = np.array(decode_image(encode(Image.fromarray(arr), "TIFF")))[0, :, 0]
    assert out.tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # normalised floats
        ([0.0, 100.0, 250.0], [0, 100, 250]),  # 8-bit values as floats
        ([-1.0, 0.0, 3.0], [0, 64, 255]),  # anything else: stretched
        ([float("nan"), 0.25, 1.0], [0, 64, 255]),  # NaN counts as 0
    ],
)
def test_float_images(values, expected):
    img = Image.fromarray(np.array([values], np.float32))
    assert img.mode == "F"
    out = np.array(decode_image(encode(img, "TIFF")))[0, :, 0]
    assert out.tolist() == expected


# ---------------------------------------------------------------- EXIF, formats, files


def exif_jpeg(orientation: int) -> bytes:
    arr = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 tall
    arr[:6, :6] = 255  # white block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_rotates_content():
    data = exif_jpeg(6)
    out = decode_image(data)
    assert out.size == (20, 40) == image_size(data)
    grey = np.array(out.convert("L"))
    ys, xs = np.nonzero(grey > 128)
    # Orientation 6 = rotate 90° clockwise for display: stored top-left lands top-right.
    assert ys.max() < 8 and xs.min() > 12
    raw = decode_image(data, apply_exif=False)
    assert raw.size == (40, 20) == image_size(data, apply_exif=False)


def test_check_reports_the_full_scale_displayed_size():
    assert check_image_bytes(exif_jpeg(6)) == (20, 40)
    big = encode(noise(640, 480), "JPEG")
    # The draft decode is smaller; the reported size is the image's own.
    assert check_image_bytes(big, draft_size=64) == (640, 480) == decode_image(big).size


def test_animated_gif_takes_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB" and px(out, 4, 4) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_decodes_by_content_behind_jpg_name(tmp_path, fmt):
    img = Image.new("RGB", (6, 5), (0, 0, 255))
    path = tmp_path / "ocr_vqa_item.jpg"
    path.write_bytes(encode(img.convert("P") if fmt == "GIF" else img, fmt))
    out = decode_image(path.read_bytes(), source=str(path))
    assert out.size == (6, 5) and px(out, 2, 2) == (0, 0, 255)


# ---------------------------------------------------------------- bad data


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    data = encode(noise(64, 48), fmt)
    with pytest.raises(ImageError, match="cut.img") as err:
        decode_image(data[: len(data) // 2], source="cut.img")
    assert err.value.reason == "truncated"
    with pytest.raises(ImageError, match="cut.img") as err:
        check_image_bytes(data[: len(data) // 2], source="cut.img", draft_size=8)
    assert err.value.reason == "truncated"


@pytest.mark.parametrize("data", [b"definitely not an image" * 8, b""], ids=["garbage", "empty"])
def test_garbage(data):
    with pytest.raises(ImageError, match="junk.jpg") as err:
        decode_image(data, source="junk.jpg")
    assert err.value.reason == "corrupt"
    assert isinstance(err.value, ValueError)


def test_decompression_bomb_refused_from_header():
    # No pixel data at all: reaching the decoder would say "truncated", so "too_large" proves the
    # size was checked first.
    with pytest.raises(ImageError, match="9000×8000") as err:
        decode_image(png_header_only(9000, 8000), source="bomb.png", max_pixels=10_000_000)
    assert err.value.reason == "too_large"
    with pytest.raises(ImageError, match="9000×8000") as err:
        check_image_bytes(png_header_only(9000, 8000), source="bomb.png", max_pixels=10_000_000)
    assert err.value.reason == "too_large"
    with pytest.raises(ImageError) as err:
        decode_image(encode(noise(30, 20), "PNG"), max_pixels=599)
    assert err.value.reason == "too_large" and "30×20" in str(err.value)
    assert decode_image(encode(noise(30, 20), "PNG"), max_pixels=600).size == (30, 20)


def test_bomb_beyond_pillows_own_limit_is_too_large():
    with pytest.raises(ImageError) as err:
        decode_image(png_header_only(50_000, 50_000), source="huge.png")
    assert err.value.reason == "too_large" and "huge.png" in str(err.value)


def test_image_error_reason_is_checked():
    with pytest.raises(ValueError, match="unknown ImageError reason"):
        ImageError("bad", "x")


# ---------------------------------------------------------------- draft decoding


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(noise(2400, 1600, seed=3), "JPEG", quality=80)


@pytest.mark.parametrize("draft", [100, 336, 700])
def test_draft_decodes_smaller_but_not_below_request(big_jpeg, draft):
    out = decode_image(big_jpeg, draft_size=draft)
    assert out.mode == "RGB"
    assert draft <= min(out.size) < 1600
    assert out.size[0] / out.size[1] == pytest.approx(1.5, rel=0.01)


def test_draft_is_a_noop_for_non_jpeg_and_small_jpeg():
    assert decode_image(encode(noise(800, 600), "PNG"), draft_size=100).size == (800, 600)
    assert decode_image(encode(noise(500, 400), "JPEG"), draft_size=336).size == (500, 400)
    grey = encode(noise(1600, 1200).convert("L"), "JPEG")
    out = decode_image(grey, draft_size=336)
    assert out.mode == "RGB" and min(out.size) >= 336 and out.size != (1600, 1200)


# ---------------------------------------------------------------- geometry


def test_pad_color_is_clip_mean_in_bytes():
    assert tuple(int(x * 255) for x in CLIP_MEAN) == PAD_COLOR


def test_expand_to_square_landscape():
    img = Image.new("RGB", (40, 21), (255, 0, 0))
    sq = np.array(expand_to_square(img))
    assert sq.shape == (40, 40, 3)
    top = (40 - 21) // 2  # 9 rows above, 10 below
    assert (sq[:top] == PAD_COLOR).all() and (sq[top + 21 :] == PAD_COLOR).all()
    assert (sq[top : top + 21] == (255, 0, 0)).all()


def test_expand_to_square_portrait_and_custom_fill():
    img = Image.new("RGB", (20, 41), (0, 0, 255))
    sq = np.array(expand_to_square(img, fill=(1, 2, 3)))
    assert sq.shape == (41, 41, 3)
    left = (41 - 20) // 2
    assert (sq[:, :left] == (1, 2, 3)).all() and (sq[:, left + 20 :] == (1, 2, 3)).all()
    assert (sq[:, left : left + 20] == (0, 0, 255)).all()
    square = Image.new("RGB", (5, 5))
    assert expand_to_square(square) is square


def test_expand_to_square_requires_rgb():
    with pytest.raises(ValueError, match="mode L"):
        expand_to_square(Image.new("L", (3, 2)))


def test_transform_image_shapes_and_pad_fill():
    out = transform_image(Image.new("RGB", (40, 20), (255, 0, 0)), "pad", 40)
    assert out.dtype == np.uint8 and out.shape == (3, 40, 40) and out.flags.c_contiguous
    assert tuple(out[:, 0, 0]) == PAD_COLOR and tuple(out[:, 20, 20]) == (255, 0, 0)
    sq = transform_image(Image.new("RGBA", (40, 20), (0, 0, 0, 0)), "square", 16)
    assert sq.shape == (3, 16, 16) and (sq == 255).all()  # non-RGB input goes through to_rgb
    with pytest.raises(ValueError, match="'pad' or 'square'"):
        transform_image(Image.new("RGB", (4, 4)), "crop", 4)


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 400), h=st.integers(1, 400), size=st.integers(1, 64))
def test_resize_crop_geometry(w, h, size):
    out = resize_shortest_center_crop(Image.new("RGB", (w, h), (9, 80, 200)), size)
    assert out.size == (size, size)
    assert (np.array(out) == (9, 80, 200)).all()  # bicubic keeps a flat colour; no padding crept in


def test_resize_crop_takes_the_centre():
    # 30 wide x 10 tall, three 10-px vertical bands: resize to 10 high is a no-op, crop keeps the middle.
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, 10:20] = 255
    out = np.array(resize_shortest_center_crop(Image.fromarray(arr), 10))
    assert (out == 255).all()
    # Odd leftover (31 - 10 = 21): the crop starts at 21 // 2 = 10, as transformers' center_crop does.
    arr = np.zeros((10, 31, 3), np.uint8)
    arr[:, 10] = 255
    out = np.array(resize_shortest_center_crop(Image.fromarray(arr), 10))
    assert (out[:, 0] == 255).all() and (out[:, 1:] == 0).all()


# ---------------------------------------------------------------- parity with CLIPImageProcessor


def reference_pixels(img: Image.Image, mode: str, size: int) -> np.ndarray:
    """LLaVA-1.5's path: expand2square (pad mode only), then the PIL CLIPImageProcessor."""
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    if mode == "pad":
        w, h = img.size
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(x * 255) for x in proc.image_mean))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    return proc(images=img, return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("size", [336, 224])
@pytest.mark.parametrize("mode", ["pad", "square"])
@pytest.mark.parametrize("wh", [(640, 480), (333, 517), (1000, 37), (337, 336), (50, 50)])
def test_pixel_values_match_clip_processor_exactly(size, mode, wh):
    img = noise(*wh, seed=wh[0])
    ours = pixel_values(img, mode, size)
    ref = reference_pixels(img, mode, size)
    assert ours.dtype == ref.dtype == np.float32 and ours.shape == ref.shape == (3, size, size)
    # Bit-identical: same resize arithmetic and filter, same float64->float32 rescale order.
    assert np.abs(ours - ref).max() == 0.0


@settings(max_examples=30, deadline=None)
@given(w=st.integers(1, 90), h=st.integers(1, 90), size=st.integers(1, 40), seed=st.integers(0, 9))
def test_pixel_values_match_clip_processor_property(w, h, size, seed):
    img = noise(w, h, seed)
    for mode in ("pad", "square"):
        assert np.array_equal(pixel_values(img, mode, size), reference_pixels(img, mode, size))


# ---------------------------------------------------------------- normalisation


def test_normalize_formula_and_batches():
    batch = np.random.default_rng(1).integers(0, 256, (2, 3, 5, 7), dtype=np.uint8)
    out = normalize(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    mean = np.array(CLIP_MEAN).reshape(3, 1, 1)
    std = np.array(CLIP_STD).reshape(3, 1, 1)
    assert np.allclose(out, (batch / 255.0 - mean) / std, atol=1e-6)
    assert np.array_equal(out[1], normalize(batch[1]))
    tensor = normalize(torch.from_numpy(batch))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert np.array_equal(tensor.numpy(), out)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3, 4, 4), np.float32), np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)],
    ids=["float", "hwc", "2d"],
)
def test_normalize_rejects_non_chw_uint8(bad):
    with pytest.raises(ValueError, match=r"uint8 pixels shaped \(\.\.\., 3, H, W\)"):
        normalize(bad)


def test_blank_pixels():
    blank = blank_pixels(336)
    assert blank.shape == (3, 336, 336) and blank.dtype == np.float32 and not blank.any()
