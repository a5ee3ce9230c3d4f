"""The prepare stage on a real local Ray: a bad-input corpus with every rejection reason."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.core import images
from components.core.config import DataSource
from components.prepare.pixels import PixelLoader, load_pixels, pixels_from_bytes
from components.prepare.process import PrepareSettings
from components.prepare.stage import prepare_dataset

N_IMG = 16
MAX_PIXELS = 400 * 400


def jpeg(color=(200, 30, 30), size=(80, 60), mode="RGB", fmt="JPEG"):
    buf = io.BytesIO()
    Image.new(mode, size, color if mode != "CMYK" else (0, 200, 200, 0)).save(buf, fmt)
    return buf.getvalue()


def png16():
    arr = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")  # uint16 → mode I;16
    return buf.getvalue()


def conv(q, a, image=True):
    return [{"from": "human", "value": ("<image>\n" if image else "") + q}, {"from": "gpt", "value": a}]


def write_corpus(root):
    """Records covering every rejection reason, plus odd-but-valid images that must be kept."""
    img = root / "images"
    img.mkdir()
    (img / "ok.jpg").write_bytes(jpeg())
    (img / "gif_named.jpg").write_bytes(jpeg(fmt="GIF"))
    (img / "png_named.jpg").write_bytes(jpeg(fmt="PNG"))
    (img / "cmyk.jpg").write_bytes(jpeg(mode="CMYK"))
    (img / "sixteen.png").write_bytes(png16())
    (img / "palette.png").write_bytes(jpeg(mode="P", color=3, fmt="PNG"))
    (img / "huge.jpg").write_bytes(jpeg(size=(800, 600)))
    full = jpeg(size=(200, 150))
    (img / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (img / "corrupt.jpg").write_bytes(b"this is not an image at all")
    good = [
        {"id": "ok", "image": "ok.jpg", "conversations": conv("What colour?", "Red.")},
        {"id": "gif", "image": "gif_named.jpg", "conversations": conv("What colour?", "Red.")},
        {"id": "png", "image": "png_named.jpg", "conversations": conv("What colour?", "Red.")},
        {"id": "cmyk", "image": "cmyk.jpg", "conversations": conv("What colour?", "Cyan.")},
        {"id": "16bit", "image": "sixteen.png", "conversations": conv("What is it?", "A gradient.")},
        {"id": "palette", "image": "palette.png", "conversations": conv("What colour?", "Red.")},
        {"id": "text", "conversations": conv("What is 2+2?", "4", image=False)},
        {"id": "long", "image": "ok.jpg", "conversations": conv("Describe.", "red " * 600)},
    ]
    bad = [
        ({"id": "noconv", "image": "ok.jpg"}, "missing_conversations"),
        ({"id": "gptfirst", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]},
         "roles_not_alternating"),
        ({"id": "empty", "conversations": conv("What?", "", image=False)}, "empty_value"),
        ({"id": "null", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "x"}]},
         "empty_value"),
        ({"id": "tok_no_field", "conversations": conv("What?", "Red.")}, "image_token_without_image"),
        ({"id": "field_no_tok", "image": "ok.jpg", "conversations": conv("What?", "Red.", image=False)},
         "image_without_image_token"),
        ({"id": "two", "image": "ok.jpg", "conversations": conv("<image> What?", "Red.")}, "multiple_image_tokens"),
        ({"id": "in_answer", "image": "ok.jpg",
          "conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "<image> red"}]},
         "image_token_in_assistant_turn"),
        ({"id": "missing", "image": "nope.jpg", "conversations": conv("What?", "Red.")}, "missing_image"),
        ({"id": "trunc", "image": "truncated.jpg", "conversations": conv("What?", "Red.")}, "truncated_image"),
        ({"id": "corrupt", "image": "corrupt.jpg", "conversations": conv("What?", "Red.")}, "corrupt_image"),
        ({"id": "huge", "image": "huge.jpg", "conversations": conv("What?", "Red.")}, "image_too_large"),
    ]
    lines = [json.dumps(r) for r in good + [r for r, _ in bad]]
    lines.insert(3, "{not json")  # malformed JSON line (line 4)
    lines.insert(5, '{"id": "badutf8", "conversations": [{"from": "human", "value": "caf\\u00e9"}]}')
    data = "\n".join(lines).encode()
    # A record with invalid UTF-8 bytes inside a string value.
    data += b'\n{"id": "latin1", "conversations": [{"from": "human", "value": "caf\xe9"}, {"from": "gpt", "value": "x"}]}\n'
    (root / "mix.jsonl").write_bytes(data)
    # A second source in JSON-list form.
    (root / "list.json").write_text(json.dumps([good[0], {"id": "l2", "conversations": conv("q", "a", False)}]))
    expected = {r: 0 for _, r in bad}
    for _, r in bad:
        expected[r] += 1
    expected["malformed_json"] = 1
    expected["invalid_utf8"] = 1
    expected["roles_not_alternating"] += 1  # the "badutf8"-named record has no gpt turn
    return expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


def sources(root):
    return [DataSource(annotations=str(root / "mix.jsonl"), image_root=str(root / "images"), name="mix"),
            DataSource(annotations=str(root / "list.json"), image_root=str(root / "images"), name="list")]


def run(root, out, tokenizer, over_length="truncate"):
    tok_dir = out.parent / "tok"
    tokenizer.save_pretrained(tok_dir)
    settings = PrepareSettings(template="vicuna_v1", num_image_tokens=N_IMG, max_length=400,
                               over_length=over_length, max_image_pixels=MAX_PIXELS)
    return prepare_dataset(sources(root), str(out), settings, str(tok_dir), rows_per_shard=4)


@pytest.fixture(scope="module")
def prepared(ray_local, corpus, tokenizer, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("prepared") / "out"
    return out, run(root, out, tokenizer)


def test_every_reason_accounted(prepared, corpus):
    _, expected = corpus
    out, stats = prepared
    assert stats["rejected_by_reason"] == expected
    assert stats["kept"] + stats["rejected"] == stats["total"] == 8 + sum(expected.values()) + 2
    assert stats["truncated"] == 1
    assert stats["per_source"]["list"] == {"total": 2, "kept": 2, "rejected": 0}
    assert stats["text_only"] == 2
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == stats["rejected"]
    for r in rejected:
        assert r["reason"] and r["file"].endswith("mix.jsonl") and str(r["index"]) in r["message"]
    malformed = next(r for r in rejected if r["reason"] == "malformed_json")
    assert malformed["index"] == 4 and "line 4" in malformed["message"]
    huge = next(r for r in rejected if r["reason"] == "image_too_large")
    assert "800×600" in huge["message"] and "field 'image'" in huge["message"]
    table = pq.read_table(out / "shards")
    assert sorted(table.column("id").to_pylist()) == sorted(
        ["ok", "gif", "png", "cmyk", "16bit", "palette", "text", "long", "ok", "l2"])
    rows = {r["id"]: r for r in table.to_pylist() if r["source"] == "mix"}
    assert rows["gif"]["image_width"] == 80 and rows["gif"]["image_height"] == 60
    assert rows["long"]["truncated"] and rows["long"]["length"] == 400
    assert rows["text"]["modality_length"] < 0 < rows["ok"]["modality_length"]


def test_over_length_policies(corpus, tokenizer):
    """Pure path (no Ray): an over-long conversation is truncated or rejected, counted either way."""
    from components.prepare.process import process_records
    from components.prepare.records import split_records
    from components.prepare.stage import source_infos

    root, _ = corpus
    src = sources(root)[:1]
    raws = list(split_records((root / "mix.jsonl").read_bytes(), src[0].annotations))
    for policy in ("truncate", "reject"):
        settings = PrepareSettings(template="vicuna_v1", num_image_tokens=N_IMG, max_length=400,
                                   over_length=policy, max_image_pixels=MAX_PIXELS)
        kept, rejected = process_records(raws, source_infos(src), tokenizer, settings)
        assert len(kept) + len(rejected) == len(raws)
        long_kept = [r for r in kept if r["id"] == "long"]
        long_rejected = [r for r in rejected if r["id"] == "long"]
        if policy == "truncate":
            assert long_kept[0]["truncated"] and not long_rejected
        else:
            assert not long_kept and long_rejected[0]["reason"] == "over_length"


def test_shards_are_deterministic(prepared, corpus, tokenizer, tmp_path):
    root, _ = corpus
    a_dir, _ = prepared
    run(root, tmp_path / "b", tokenizer)
    a = pq.read_table(a_dir / "shards")
    b = pq.read_table(tmp_path / "b" / "shards")
    assert a.num_rows and a.equals(b)
    for name in ("stats.json", "rejected.jsonl"):
        assert (a_dir / name).read_text() == (tmp_path / "b" / name).read_text()


def test_streaming_pixels_equal_pure_functions(ray_local, prepared):
    out, _ = prepared
    ds = ray_local.data.read_parquet(str(out / "shards")).map_batches(
        PixelLoader("pad", 56), batch_format="pyarrow", batch_size=4)
    rows = ds.take_all()
    assert rows
    for row in rows:
        got = images.normalize(pixels_from_bytes([row["pixels"]], 56))[0]
        if row["image"]:
            img = images.decode_image(Path(row["image"]).read_bytes(), draft_size=56)
            assert np.array_equal(got, images.pixel_values(img, "pad", 56))
        else:
            assert np.array_equal(load_pixels("", "pad", 56), np.zeros((3, 56, 56), np.uint8))


def test_s3_inputs_and_outputs(ray_local, s3_server, corpus, tokenizer, tmp_path):
    import s3fs

    root, expected = corpus
    fs = s3fs.S3FileSystem()
    fs.mkdir("prep-bucket")
    fs.put(str(root) + "/", "prep-bucket/corpus/", recursive=True)
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    srcs = [DataSource(annotations="s3://prep-bucket/corpus/mix.jsonl", image_root="s3://prep-bucket/corpus/images",
                       name="mix")]
    settings = PrepareSettings(template="vicuna_v1", num_image_tokens=N_IMG, max_length=400,
                               max_image_pixels=MAX_PIXELS)
    stats = prepare_dataset(srcs, "s3://prep-bucket/prepared", settings, str(tok_dir))
    assert stats["rejected_by_reason"] == expected
    assert json.loads(fs.cat("prep-bucket/prepared/stats.json")) == stats
    assert fs.glob("prep-bucket/prepared/shards/*.parquet")
    assert len(fs.cat("prep-bucket/prepared/rejected.jsonl").splitlines()) == stats["rejected"]
