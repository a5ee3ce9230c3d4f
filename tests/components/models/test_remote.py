"""Copying a remote checkpoint folder: object keys are someone else's text and must not escape the cache."""

from pathlib import Path

import boto3
import pytest

from components.models.remote import localize


def test_a_key_with_dotdot_cannot_write_outside_the_cache(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_PIPELINE_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="ckpt-bucket")
    s3.put_object(Bucket="ckpt-bucket", Key="good/config.json", Body=b"{}")
    local = localize("s3://ckpt-bucket/good")
    assert (Path(local) / "config.json").read_text() == "{}"

    s3.put_object(Bucket="ckpt-bucket", Key="evil/config.json", Body=b"{}")
    s3.put_object(Bucket="ckpt-bucket", Key="evil/../../../escaped.txt", Body=b"pwned")
    with pytest.raises(ValueError, match="does not name a file inside the checkpoint folder"):
        localize("s3://ckpt-bucket/evil")
    assert not list(tmp_path.rglob("escaped.txt"))  # unchecked, the copy would land in tmp_path itself


def test_a_folder_can_be_fetched_without_its_images(s3_server, tmp_path, monkeypatch):
    """A benchmark folder's question files come to this node; its images stay in the bucket (each reader
    opens its own), and the partial copy never stands in for the whole folder."""
    monkeypatch.setenv("LLAVA_PIPELINE_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="eval-bucket")
    s3.put_object(Bucket="eval-bucket", Key="gqa/questions.jsonl", Body=b"{}\n")
    s3.put_object(Bucket="eval-bucket", Key="gqa/images/a.png", Body=b"png")
    s3.put_object(Bucket="eval-bucket", Key="gqa/images_extra.txt", Body=b"kept: only the folder is left out")
    partial = Path(localize("s3://eval-bucket/gqa", exclude=("images",)))
    assert sorted(p.name for p in partial.rglob("*") if p.is_file()) == ["images_extra.txt", "questions.jsonl"]
    whole = Path(localize("s3://eval-bucket/gqa"))
    assert whole != partial and (whole / "images" / "a.png").read_bytes() == b"png"
