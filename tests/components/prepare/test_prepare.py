"""The prepare stage on a real local Ray: a bad-input corpus with every rejection reason (the pixels training
streams from its shards: tests/components/train/test_pixels.py)."""

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.prepare.dataset import prepare_dataset
from components.prepare.process import PrepareSettings
from components.prepare.spec import DataSource

N_IMG = 16
MAX_PIXELS = 400 * 400
MAX_BYTES = 200_000
MAX_SIDE = 1000
MAX_LINE = 50_000
SENTINEL_SIZE = (77, 33)  # the sentinel outside the root decodes to this size: a read would show in the shards


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


def png(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


def write_hostile_files(root):
    """Files a hostile record points at: outside the root, not regular, too big, too thin."""
    img = root / "images"
    (root / "secret.jpg").write_bytes(jpeg(size=SENTINEL_SIZE))  # the sentinel, outside the image root
    (root / "trusted.jpg").write_bytes(jpeg())  # outside too, for the trusted source
    (img / "link.jpg").symlink_to(root / "secret.jpg")
    (img / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(img / "pipe.jpg")
    (img / "sub").mkdir()
    (img / "big.jpg").write_bytes(jpeg() + b"\0" * MAX_BYTES)
    (img / "thin.png").write_bytes(png((1, 100_000)))
    (img / "side.png").write_bytes(png((MAX_SIDE + 200, 100)))
    (root / "trusted.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"id": "t_abs", "image": str(root / "trusted.jpg"), "conversations": conv("What colour?", "Red.")},
        {"id": "t_zero", "image": "/dev/zero", "conversations": conv("What?", "Zero.")},
        {"id": "t_fifo", "image": str(img / "pipe.jpg"), "conversations": conv("What?", "Pipe.")},
    )))


def hostile_records(root):
    """(record, reason): one per way a record can try to escape its root or hurt a worker."""
    def rec(rid, image, answer="Red."):
        return {"id": rid, "image": image, "conversations": conv("What?", answer)}

    return [
        (rec("up", "../secret.jpg"), "image_outside_root"),
        (rec("abs", str(root / "secret.jpg")), "image_outside_root"),
        (rec("symlink", "link.jpg"), "image_outside_root"),
        (rec("devzero", "/dev/zero"), "image_outside_root"),
        (rec("zero_link", "zero.jpg"), "image_outside_root"),
        (rec("fifo", "pipe.jpg"), "image_not_a_file"),
        (rec("dot", "."), "image_not_a_file"),
        (rec("dir", "sub"), "image_not_a_file"),
        (rec("http", "http://127.0.0.1:9/x.jpg"), "image_is_url"),
        (rec("s3", "s3://other-bucket/x.jpg"), "image_is_url"),
        (rec("bytes", "big.jpg"), "image_too_large"),
        (rec("thin", "thin.png"), "image_aspect_ratio"),
        (rec("side", "side.png"), "image_too_large"),
        (rec("multi", ["ok.jpg", "gif_named.jpg"]), "multiple_images"),
        ({"id": True, "conversations": conv("What?", "Red.", image=False)}, "invalid_id"),
        (rec("eos", "ok.jpg", "Red.</s> And then more."), "special_token_text"),
    ]


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
    write_hostile_files(root)
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
        *hostile_records(root),
    ]
    lines = [json.dumps(r) for r in good + [r for r, _ in bad]]
    lines.append(json.dumps({"id": "dup", "conversations": conv("Again?", "Yes.", image=False)}))
    lines.append(json.dumps({"id": "dup", "conversations": conv("Again?", "Yes.", image=False)}))
    lines.append('{"id": "sep", "conversations": [{"from": "human", "value": "a\u2028b\u0085c"}, '
                 '{"from": "gpt", "value": "x"}]}\r')  # U+2028/U+0085 raw inside a string, CRLF line end
    lines.insert(3, "{not json")  # malformed JSON line (line 4)
    lines.insert(5, '{"id": "badutf8", "conversations": [{"from": "human", "value": "caf\\u00e9"}]}')
    data = "\ufeff".encode() + "\n".join(lines).encode()
    data += b"\n" + b'{"id": "giant", "pad": "' + b"x" * MAX_LINE + b'"}'  # line_too_long
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
    expected["line_too_long"] = 1
    expected["roles_not_alternating"] += 1  # the "badutf8"-named record has no gpt turn
    return expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


def sources(root):
    return [DataSource(annotations=str(root / "mix.jsonl"), image_root=str(root / "images"), name="mix"),
            DataSource(annotations=str(root / "list.json"), image_root=str(root / "images"), name="list"),
            DataSource(annotations=str(root / "trusted.jsonl"), image_root=str(root / "images"), name="trusted",
                       allow_absolute_paths=True)]


def settings_for(over_length="truncate", **kw):
    kw.setdefault("max_rejected_fraction", 1.0)  # this corpus is mostly bad on purpose
    return PrepareSettings(template="vicuna_v1", num_image_tokens=N_IMG, max_length=400, over_length=over_length,
                           max_image_pixels=MAX_PIXELS, max_image_bytes=MAX_BYTES, max_image_side=MAX_SIDE,
                           max_line_bytes=MAX_LINE, **kw)


def run(root, out, tokenizer, over_length="truncate"):
    tok_dir = out.parent / "tok"
    tokenizer.save_pretrained(tok_dir)
    return prepare_dataset(sources(root), str(out), settings_for(over_length), str(tok_dir), rows_per_shard=4)


@pytest.fixture(scope="module")
def prepared(ray_local, corpus, tokenizer, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("prepared") / "out"
    return out, run(root, out, tokenizer)


def test_every_reason_accounted(prepared, corpus):
    _, expected = corpus
    out, stats = prepared
    # The trusted source reads absolute paths, yet still only regular files.
    assert stats["rejected_by_reason"] == {**expected, "image_not_a_file": expected["image_not_a_file"] + 2}
    n_mix = 8 + 2 + 1 + sum(expected.values())  # good, two "dup", "sep", bad
    assert stats["kept"] + stats["rejected"] == stats["total"] == n_mix + 2 + 3
    assert stats["truncated"] == 1
    assert stats["per_source"]["list"] == {"total": 2, "kept": 2, "rejected": 0}
    assert stats["per_source"]["trusted"] == {"total": 3, "kept": 1, "rejected": 2}
    assert stats["text_only"] == 5
    assert stats["duplicate_ids"] == {"repeated": 2, "examples": ["ok", "dup"], "policy": "keep"}
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == stats["rejected"]
    for r in rejected:
        assert r["reason"] and r["file"].endswith(("mix.jsonl", "trusted.jsonl")) and str(r["index"]) in r["message"]
    malformed = next(r for r in rejected if r["reason"] == "malformed_json")
    assert malformed["index"] == 4 and "line 4" in malformed["message"]
    huge = next(r for r in rejected if r["reason"] == "image_too_large" and r["id"] == "huge")
    assert "800×600" in huge["message"] and "field 'image'" in huge["message"]
    by_id = {r["id"]: r for r in rejected}
    assert "over the limit of 200,000" in by_id["bytes"]["message"]
    assert "1×100000" in by_id["thin"]["message"]
    assert "max_image_side" in by_id["side"]["message"]
    assert by_id["t_zero"]["reason"] == by_id["t_fifo"]["reason"] == "image_not_a_file"
    assert "'</s>'" in by_id["eos"]["message"]
    table = pq.read_table(out / "shards")
    assert sorted(table.column("id").to_pylist()) == sorted(
        ["ok", "gif", "png", "cmyk", "16bit", "palette", "text", "long", "dup", "dup", "sep", "ok", "l2", "t_abs"])
    # The sentinel outside the root was never read: it would have been kept, with its own size.
    assert (SENTINEL_SIZE[0], SENTINEL_SIZE[1]) not in set(
        zip(table.column("image_width").to_pylist(), table.column("image_height").to_pylist(), strict=True))
    assert not any("secret" in p for p in table.column("image").to_pylist())
    rows = {r["id"]: r for r in table.to_pylist() if r["source"] == "mix"}
    assert rows["gif"]["image_width"] == 80 and rows["gif"]["image_height"] == 60
    assert rows["long"]["truncated"] and rows["long"]["length"] == 400
    assert rows["text"]["modality_length"] < 0 < rows["ok"]["modality_length"]


def test_too_many_rejected_fails_loudly(ray_local, corpus, tokenizer, tmp_path):
    """A wrong image_root rejects every image record: the stage fails, naming the top reason, and
    rejected.jsonl still says what was dropped."""
    from components.prepare.dataset import TooManyRejected

    root, _ = corpus
    tokenizer.save_pretrained(tmp_path / "tok")
    wrong = [DataSource(annotations=str(root / "list.json"), image_root=str(root / "nowhere"), name="list")]
    with pytest.raises(TooManyRejected, match=r"1 of 2 records rejected \(50%.*missing_image 1"):
        prepare_dataset(wrong, str(tmp_path / "out"), settings_for(max_rejected_fraction=0.4), str(tmp_path / "tok"))
    assert json.loads((tmp_path / "out" / "rejected.jsonl").read_text())["reason"] == "missing_image"


def test_over_length_policies(corpus, tokenizer):
    """Pure path (no Ray): an over-long conversation is truncated or rejected, counted either way."""
    from components.prepare.dataset import source_infos
    from components.prepare.process import process_records
    from components.prepare.records import split_records

    root, _ = corpus
    src = sources(root)[:1]
    raws = list(split_records((root / "mix.jsonl").read_bytes(), src[0].annotations))
    for policy in ("truncate", "reject"):
        settings = settings_for(policy)
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


def test_s3_inputs_and_outputs(ray_local, s3_server, corpus, tokenizer, tmp_path):
    import s3fs

    root, expected = corpus
    fs = s3fs.S3FileSystem()
    fs.mkdir("prep-bucket")
    for path in root.rglob("*"):  # regular files only: S3 has no FIFOs or symlinks
        if path.is_file() and not path.is_symlink():
            fs.put_file(str(path), f"prep-bucket/corpus/{path.relative_to(root)}")
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    srcs = [DataSource(annotations="s3://prep-bucket/corpus/mix.jsonl", image_root="s3://prep-bucket/corpus/images",
                       name="mix")]
    stats = prepare_dataset(srcs, "s3://prep-bucket/prepared", settings_for(duplicate_ids="reject"), str(tok_dir))
    # Local-only cases differ on S3 (no FIFOs or symlinks there; absolute paths and URLs stay refused).
    local_only = {"image_not_a_file", "image_outside_root", "image_is_url", "missing_image"}
    got = {k: v for k, v in stats["rejected_by_reason"].items() if k not in local_only}
    assert got == {**{k: v for k, v in expected.items() if k not in local_only}, "duplicate_id": 1}
    assert stats["duplicate_ids"] == {"repeated": 1, "examples": ["dup"], "policy": "reject"}
    shard_ids = pq.read_table("prep-bucket/prepared/shards", filesystem=fs).column("id").to_pylist()
    assert shard_ids.count("dup") == 1 and len(shard_ids) == stats["kept"]
    assert json.loads(fs.cat("prep-bucket/prepared/stats.json")) == stats
    assert fs.glob("prep-bucket/prepared/shards/*.parquet")
    lines = fs.cat("prep-bucket/prepared/rejected.jsonl").splitlines()
    assert len(lines) == stats["rejected"]
    reasons = {r["id"]: r["reason"] for r in map(json.loads, lines)}
    assert reasons["up"] == reasons["abs"] == reasons["devzero"] == reasons["dot"] == "image_outside_root"
    assert reasons["s3"] == "image_outside_root"  # an s3:// URL, but in another bucket
    assert reasons["http"] == "image_is_url"


class BrokenOnMarker:
    """The real tokenizer, except that it raises on one text: stands for a bug that one record triggers."""

    def __init__(self, tok):
        self.tok = tok
        self.bos_token_id, self.eos_token_id = tok.bos_token_id, tok.eos_token_id

    def __call__(self, text, add_special_tokens=True):
        if any("MARKER" in t for t in text):
            raise RuntimeError("tokenizer bug on MARKER")
        return self.tok(text, add_special_tokens=add_special_tokens)

    def convert_tokens_to_ids(self, token):
        return self.tok.convert_tokens_to_ids(token)


def test_any_exception_is_that_records_rejection(corpus, tokenizer):
    """Pure path: an unexpected exception costs its own record only, with its type and message."""
    from components.prepare.dataset import source_infos
    from components.prepare.process import process_records
    from components.prepare.records import RawRecord

    root, _ = corpus
    src = sources(root)[:1]
    raws = [RawRecord(src[0].annotations, i, {"id": f"r{i}", "conversations": conv("What?", a, image=False)})
            for i, a in enumerate(["Red.", "MARKER", "Blue."])]
    kept, rejected = process_records(raws, source_infos(src), BrokenOnMarker(tokenizer), settings_for())
    assert [r["id"] for r in kept] == ["r0", "r2"]
    (bad,) = rejected
    assert bad["id"] == "r1" and bad["reason"] == "unexpected_error"
    assert "RuntimeError: tokenizer bug on MARKER" in bad["message"] and "record 1" in bad["message"]
