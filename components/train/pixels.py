"""The streaming image map the training stages run on CPU workers over prepared shards.

Shards hold image references, not pixels, so one prepared dataset serves every resolution and image
mode. Each batch decodes its images once (JPEG draft mode straight to about the target size), pads or
crops, resizes, and ships uint8 pixels; normalisation happens on the training worker (GPU when there is one).

`prepare` checked every image, but storage changes under a 20-hour run: an image deleted or damaged since then
costs its own sample only. Its row gets zero pixels and an `image_error` ("reason<TAB>message"); the training
loop masks that sample's labels and counts it, rather than failing the block and with it the worker group.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from components.core import datafiles, images

# Written as `image_error` on a row whose image could not be read or decoded at training time.
ROW_ERRORS = (datafiles.DataFileError, images.ImageError)


def load_pixels(uri: str, mode: Literal["pad", "square"], size: int,
                max_pixels: int = images.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 (3, size, size) pixels of one image; zeros for a text-only sample (uri "").

    `uri` is the path `prepare` resolved and checked under its root; it is read the same guarded way.
    """
    if not uri:
        return np.zeros((3, size, size), np.uint8)
    img = images.decode_image(datafiles.read_checked(uri), source=uri, max_pixels=max_pixels, draft_size=size)
    return images.transform_image(img, mode, size)


class PixelLoader:
    """map_batches callable: adds a `pixels` column (raw uint8 bytes of a (3, size, size) array)."""

    def __init__(self, mode: Literal["pad", "square"], size: int) -> None:
        self.mode = mode
        self.size = size

    def __call__(self, batch: pa.Table) -> pa.Table:
        pixels, errors = [], []
        for uri in batch.column("image").to_pylist():
            try:
                pixels.append(load_pixels(uri, self.mode, self.size).tobytes())
                errors.append("")
            except ROW_ERRORS as e:
                pixels.append(bytes(3 * self.size * self.size))
                errors.append(f"{e.reason}\t{e}")
        return (batch.append_column("pixels", pa.array(pixels, type=pa.binary()))
                .append_column("image_error", pa.array(errors, type=pa.string())))


def pixels_from_bytes(raw: list[bytes], size: int) -> np.ndarray:
    """(N, 3, size, size) uint8 array from a batch's `pixels` column."""
    return np.stack([np.frombuffer(b, np.uint8).reshape(3, size, size) for b in raw])
