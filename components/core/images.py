"""Image decoding and CLIP preprocessing, matching LLaVA-1.5's pipeline pixel for pixel.

Decoding is by content (OCR-VQA stores GIFs and PNGs under .jpg names), guarded against
decompression bombs, EXIF-aware, and turns every Pillow mode into 8-bit RGB. Preprocessing
reproduces the reference's `expand2square` and the PIL-based `CLIPImageProcessor` (shortest-edge
bicubic resize, centre crop, rescale, normalise) exactly. Pixels leave `transform_image` as uint8
CHW so they are cheap to ship; `normalize` turns them into the model's float32 input anywhere,
GPU included.
"""

from __future__ import annotations

import io
import logging
import struct
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Reason = Literal["missing", "corrupt", "truncated", "too_large", "unsupported"]
REASONS: frozenset[str] = frozenset({"missing", "corrupt", "truncated", "too_large", "unsupported"})
# The rejection reason a record (prepare) or question (evaluate) gets for each ImageError reason.
REJECTION_REASONS = {"missing": "missing_image", "corrupt": "corrupt_image", "truncated": "truncated_image",
                     "too_large": "image_too_large", "unsupported": "unsupported_image"}

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = (122, 116, 104)  # tuple(int(x * 255) for x in CLIP_MEAN), the reference's pad fill

_EXIF_ORIENTATION = 0x0112
# Errors Pillow's decoders raise on bad input. Fuzzed files reach odd corners of the plugins,
# hence more than OSError; all of them mean "this file cannot be decoded".
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    ZeroDivisionError,
    NotImplementedError,
)


class ImageError(ValueError):
    """An image that cannot be used; `reason` is a short code for counting, the message names the file."""

    def __init__(self, reason: Reason, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown ImageError reason {reason!r}; expected one of {sorted(REASONS)}")
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message


# ---------------------------------------------------------------- decoding


def _open(data: bytes, source: str) -> Image.Image:
    """Identify the format from the bytes (never from a file name) and read the header only."""
    if not data:
        raise ImageError("corrupt", f"{source}: empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        # Pillow refuses before we see the size; its message carries the pixel count.
        raise ImageError("too_large", f"{source}: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError("corrupt", f"{source}: not a recognisable image ({len(data)} bytes)") from e
    except _DECODE_ERRORS as e:
        raise _classify(e, source) from e


def _classify(e: BaseException, source: str) -> ImageError:
    text = str(e)
    if isinstance(e, EOFError) or "truncated" in text.lower():
        return ImageError("truncated", f"{source}: truncated image data ({text})")
    if ("decoder" in text and "not available" in text) or isinstance(e, NotImplementedError):
        return ImageError("unsupported", f"{source}: unsupported image encoding ({text})")
    return ImageError("corrupt", f"{source}: corrupt image data ({type(e).__name__}: {text})")


def _oriented_size(img: Image.Image, source: str) -> tuple[int, int]:
    w, h = img.size
    # Orientations 5-8 rotate by 90 degrees, so the displayed image has width and height swapped.
    return (h, w) if _orientation(img, source) in (5, 6, 7, 8) else (w, h)


def _orientation(img: Image.Image, source: str) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS as e:
        # A broken EXIF block does not spoil the pixels; the reference ignores EXIF entirely.
        log.warning("%s: unreadable EXIF metadata, orientation ignored (%s)", source, e)
        return 1


def image_size(data: bytes, *, source: str = "<bytes>", apply_exif: bool = True) -> tuple[int, int]:
    """(width, height) from the header alone, as `decode_image` would return it (EXIF-rotated)."""
    img = _open(data, source)
    return _oriented_size(img, source) if apply_exif else img.size


def decode_image(
    data: bytes,
    *,
    source: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    apply_exif: bool = True,
) -> Image.Image:
    """Decode encoded image bytes into a fully loaded 8-bit RGB image.

    `source` only names the image in errors. Images over `max_pixels` (checked on the header's size,
    before any pixel is decoded) are refused. `draft_size` lets a JPEG decode at a reduced scale whose
    shortest side is still >= draft_size. `apply_exif` rotates by the EXIF orientation tag. The first
    frame of an animation is taken. Raises `ImageError` for every bad input.
    """
    return _load(_open_checked(data, source, max_pixels), source, draft_size, apply_exif)


def check_image_bytes(
    data: bytes, *, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int = 64
) -> tuple[int, int]:
    """(width, height) as `decode_image` would return them at full scale (EXIF-rotated), after decoding
    the image at a small draft scale: a JPEG's whole stream is still read, so bad data is caught, but most
    of the IDCT work is skipped. Raises `ImageError` for every bad input."""
    img = _open_checked(data, source, max_pixels)
    size = _oriented_size(img, source)
    _load(img, source, draft_size, apply_exif=False)
    return size


def _open_checked(data: bytes, source: str, max_pixels: int) -> Image.Image:
    img = _open(data, source)
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(
            "too_large",
            f"{source}: image is {w}×{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(possible decompression bomb)",
        )
    return img


def _load(img: Image.Image, source: str, draft_size: int | None, apply_exif: bool) -> Image.Image:
    if draft_size is not None:
        if draft_size <= 0:
            raise ValueError(f"draft_size must be positive, got {draft_size}")
        if img.format == "JPEG":
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale; Pillow picks the largest reduction that keeps
            # both sides >= the requested box, so the shortest side stays >= draft_size.
            img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()  # decode now, so that bad data fails here and not in a later transform
        if apply_exif and _orientation(img, source) != 1:
            img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except ImageError as e:  # from to_rgb, which does not know the source
        raise ImageError(e.reason, f"{source}: {e.message}") from e
    except Image.DecompressionBombError as e:  # some plugins check again while loading frames
        raise ImageError("too_large", f"{source}: {e}") from e
    except _DECODE_ERRORS as e:
        raise _classify(e, source) from e


# ---------------------------------------------------------------- mode conversion


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (a no-op for RGB)."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if {"A", "a"} & set(img.getbands()) or ("transparency" in img.info and not _is_wide(img)):
        # Transparent pixels carry arbitrary colour underneath (often black, which turns dark text
        # or logos on a transparent background into black-on-black), so a plain convert("RGB")
        # would expose garbage. Compositing over white shows them as viewers and documents do and
        # matches transformers' convert_to_rgb. The LLaVA reference did a plain convert("RGB"),
        # so this differs from it only for images that actually have transparent pixels.
        rgba = _convert(img, "RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if _is_wide(img):
        return Image.fromarray(_wide_to_uint8(img), "L").convert("RGB")
    return _convert(img, "RGB")


def _is_wide(img: Image.Image) -> bool:
    return img.mode in ("I", "F") or img.mode.startswith("I;16")


def _convert(img: Image.Image, mode: str) -> Image.Image:
    try:
        return img.convert(mode)
    except ValueError as e:
        raise ImageError("unsupported", f"cannot convert image mode {img.mode} to {mode}: {e}") from e


def _wide_to_uint8(img: Image.Image) -> np.ndarray:
    """Scale 16/32-bit integer or float grey to 8 bits over its full range (Pillow's convert clips)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return _scale_16bit(arr)
    if img.mode == "I":
        # Pillow uses "I" for 16-bit data from some formats; anything outside 0..65535 is stretched.
        lo, hi = int(arr.min()), int(arr.max())
        return _scale_16bit(arr) if lo >= 0 and hi <= 65535 else _stretch(arr.astype(np.float64))
    arr = np.where(np.isfinite(arr), arr, 0.0).astype(np.float64)  # mode "F"
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:  # normalised floats
        return np.rint(arr * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:  # 8-bit values stored as floats
        return np.rint(arr).astype(np.uint8)
    return _stretch(arr)


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    # round(v * 255 / 65535) == round(v / 257), in exact integer arithmetic (no ties occur).
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


# ---------------------------------------------------------------- CLIP preprocessing


def expand_to_square(img: Image.Image, fill: tuple[int, int, int] = PAD_COLOR) -> Image.Image:
    """Pad the short side symmetrically to a square (the reference's expand2square, 'pad' mode)."""
    if img.mode != "RGB":
        raise ValueError(f"expand_to_square needs an RGB image, got mode {img.mode}")
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    square = Image.new("RGB", (side, side), fill)
    square.paste(img, ((side - w) // 2, (side - h) // 2))  # one of the two offsets is 0
    return square


def resize_shortest_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Bicubic-resize the shortest edge to `size`, then centre-crop size×size.

    Same arithmetic as transformers' PIL CLIPImageProcessor: long side int(size * long / short)
    (truncated), Pillow BICUBIC, crop offsets (new - size) // 2.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    w, h = img.size
    if w == 0 or h == 0:
        raise ValueError(f"cannot resize an empty {w}×{h} image")
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    resized = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


def _pad_resize_wide(img: Image.Image, size: int) -> Image.Image:
    """expand_to_square then resize to size×size, for a landscape RGB image, without resampling the padding.

    Pillow resizes horizontally, then vertically, through an 8-bit image, and the horizontal pass leaves a
    row of one colour exactly that colour. So narrowing the content first and padding it afterwards gives
    the same bytes as padding first, and skips the padding rows (a quarter of the work for 4:3).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    w, h = img.size
    narrowed = img.resize((size, h), Image.Resampling.BICUBIC)
    tall = Image.new("RGB", (size, w), PAD_COLOR)
    tall.paste(narrowed, (0, (w - h) // 2))
    return tall.resize((size, size), Image.Resampling.BICUBIC)


def transform_image(img: Image.Image, mode: Literal["pad", "square"], size: int) -> np.ndarray:
    """uint8 (3, size, size) CHW pixels: 'pad' squares with PAD_COLOR first, 'square' centre-crops."""
    img = to_rgb(img)
    if mode == "pad" and img.width > img.height:
        out = _pad_resize_wide(img, size)
    else:
        if mode == "pad":
            img = expand_to_square(img)
        elif mode != "square":
            raise ValueError(f"image mode must be 'pad' or 'square', got {mode!r}")
        out = resize_shortest_center_crop(img, size)
    return np.ascontiguousarray(np.asarray(out).transpose(2, 0, 1))


def _normalize_table() -> np.ndarray:
    # The PIL CLIPImageProcessor rescales in float64, casts to float32, then normalises in float32.
    # Tabulating that per (channel, value) makes normalize() bit-identical to it and a plain gather,
    # which runs the same on CPU and GPU.
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(CLIP_MEAN, np.float32)[:, None]
    std = np.asarray(CLIP_STD, np.float32)[:, None]
    return ((scaled[None, :] - mean) / std).astype(np.float32)  # (3, 256)


_NORM_TABLE = _normalize_table()
_CHANNEL_OFFSET = (np.arange(3, dtype=np.int64) * 256).reshape(3, 1, 1)


def normalize(pixels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 CLIP input: x / 255, minus CLIP_MEAN, over CLIP_STD.

    Takes a numpy array or a torch tensor (on any device) and returns the same kind.
    """
    shape, dtype = tuple(pixels.shape), str(pixels.dtype)
    if len(shape) < 3 or shape[-3] != 3 or dtype not in ("uint8", "torch.uint8"):
        raise ValueError(f"normalize expects uint8 pixels shaped (..., 3, H, W), got {dtype} {shape}")
    if isinstance(pixels, np.ndarray):
        return np.take(_NORM_TABLE.reshape(-1), pixels.astype(np.int64) + _CHANNEL_OFFSET)
    import torch  # only when a tensor was passed: keeps this module importable without torch

    table = torch.from_numpy(_NORM_TABLE.reshape(-1)).to(pixels.device)
    offset = torch.from_numpy(_CHANNEL_OFFSET).to(pixels.device)
    return torch.take(table, pixels.long() + offset)


def pixel_values(img: Image.Image, mode: Literal["pad", "square"], size: int) -> np.ndarray:
    """float32 (3, size, size) model input, equal to the reference's processor output."""
    return normalize(transform_image(img, mode, size))


def blank_pixels(size: int) -> np.ndarray:
    """The all-zero (3, size, size) image a text-only sample gets in a multimodal batch."""
    return np.zeros((3, size, size), np.float32)
