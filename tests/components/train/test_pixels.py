"""Training's pixels (components/train/pixels.py): the streaming Ray Data map over prepared shards gives exactly
what the pure functions give, for every kind of image prepare keeps (odd formats and modes, both aspect ratios,
text-only rows)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from components.core import images
from components.prepare.dataset import prepare_dataset
from components.prepare.process import PrepareSettings
from components.prepare.spec import DataSource
from components.train.pixels import PixelLoader, load_pixels, pixels_from_bytes

SIZE = 56


def encoded(size=(80, 60), mode="RGB", fmt="JPEG", color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode != "CMYK" else (0, 200, 200, 0)).save(buf, fmt)
    return buf.getvalue()


def png16() -> bytes:
    arr = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")  # uint16 → mode I;16
    return buf.getvalue()


IMAGES = {
    "ok.jpg": lambda: encoded(),
    "gif_named.jpg": lambda: encoded(fmt="GIF"),
    "png_named.jpg": lambda: encoded(fmt="PNG"),
    "cmyk.jpg": lambda: encoded(mode="CMYK"),
    "sixteen.png": png16,
    "palette.png": lambda: encoded(mode="P", color=3, fmt="PNG"),
    "wide.jpg": lambda: encoded(size=(300, 90), color=(10, 90, 200)),
    "tall.png": lambda: encoded(size=(40, 150), fmt="PNG", color=(20, 200, 20)),
}


def _conv(question: str, answer: str, image: bool = True) -> list[dict[str, str]]:
    return [{"from": "human", "value": ("<image>\n" if image else "") + question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pixels")
    (root / "images").mkdir()
    records = []
    for i, (name, make) in enumerate(IMAGES.items()):
        (root / "images" / name).write_bytes(make())
        records.append({"id": f"img{i}", "image": name, "conversations": _conv("What colour?", "Red.")})
    records.append({"id": "text", "conversations": _conv("What is 2+2?", "4", image=False)})
    (root / "data.json").write_text(json.dumps(records))
    return root


@pytest.fixture(scope="module")
def prepared(ray_local, corpus, tokenizer) -> Path:
    out = corpus / "prepared"
    tokenizer.save_pretrained(corpus / "tok")
    settings = PrepareSettings(template="vicuna_v1", num_image_tokens=16, max_length=400)
    source = DataSource(annotations=str(corpus / "data.json"), image_root=str(corpus / "images"), name="odd")
    stats = prepare_dataset([source], str(out), settings, str(corpus / "tok"), rows_per_shard=4)
    assert stats["kept"] == len(IMAGES) + 1 and stats["rejected"] == 0
    return out


def _expected(uri: str, mode: str) -> np.ndarray:
    """Normalised pixels by the pure functions: decode, pad or square, resize, normalise."""
    img = images.decode_image(Path(uri).read_bytes(), draft_size=SIZE)
    return images.pixel_values(img, mode, SIZE)


@pytest.mark.parametrize("mode", ["pad", "square"])
def test_streaming_pixels_equal_pure_functions(ray_local, prepared, mode):
    ds = ray_local.data.read_parquet(str(prepared / "shards")).map_batches(
        PixelLoader(mode, SIZE), batch_format="pyarrow", batch_size=4)
    rows = ds.take_all()
    assert len(rows) == len(IMAGES) + 1
    for row in rows:
        got = images.normalize(pixels_from_bytes([row["pixels"]], SIZE))[0]
        if row["image"]:
            assert np.array_equal(got, _expected(row["image"], mode)), row["id"]
        else:
            assert np.array_equal(load_pixels("", mode, SIZE), np.zeros((3, SIZE, SIZE), np.uint8))
            assert np.array_equal(got, images.normalize(np.zeros((1, 3, SIZE, SIZE), np.uint8))[0])


def test_pixel_loader_adds_one_uint8_array_per_row(corpus):
    """No Ray: the map function itself, on a table as the shards hold it."""
    paths = [str(corpus / "images" / name) for name in ("wide.jpg", "tall.png")]
    table = pa.table({"id": ["w", "t", "x"], "image": [*paths, ""]})
    out = PixelLoader("pad", SIZE)(table)
    assert out.column_names == ["id", "image", "pixels", "image_error"]
    assert out.column("id").to_pylist() == ["w", "t", "x"] and out.column("image_error").to_pylist() == [""] * 3
    pixels = pixels_from_bytes(out.column("pixels").to_pylist(), SIZE)
    assert pixels.shape == (3, 3, SIZE, SIZE) and pixels.dtype == np.uint8
    for got, path in zip(pixels[:2], paths, strict=True):
        assert np.array_equal(got, load_pixels(path, "pad", SIZE))
    assert not pixels[2].any()  # a text-only row: zeros
    # pad and square differ on a non-square image (pad keeps the whole image, square crops it)
    assert not np.array_equal(load_pixels(paths[0], "pad", SIZE), load_pixels(paths[0], "square", SIZE))


def test_an_image_gone_or_broken_since_prepare_costs_its_row_only(corpus, tmp_path):
    """Storage changes under a long run: a deleted or damaged image gives its row zero pixels and the reason;
    the rest of the batch loads as usual (the loop masks that sample and counts it: test_lost_samples.py)."""
    kept = str(corpus / "images" / "wide.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(encoded()[:40])
    table = pa.table({"id": ["gone", "ok", "broken"], "image": [str(tmp_path / "deleted.jpg"), kept, str(broken)]})
    out = PixelLoader("pad", SIZE)(table)
    errors = out.column("image_error").to_pylist()
    assert errors[0].startswith("missing_image\t") and str(tmp_path / "deleted.jpg") in errors[0]
    assert errors[1] == ""
    assert errors[2].split("\t")[0] in images.REASONS and str(broken) in errors[2]
    pixels = pixels_from_bytes(out.column("pixels").to_pylist(), SIZE)
    assert not pixels[0].any() and not pixels[2].any()
    assert np.array_equal(pixels[1], load_pixels(kept, "pad", SIZE))
