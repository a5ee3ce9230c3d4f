"""Copying a remote checkpoint folder: object keys are someone else's text and must not escape the cache; a node
fetches a folder once however many processes ask, and never takes a fetch cut short for the folder."""

import os
import shutil
import subprocess
import sys
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


def _put_folder(s3_server, bucket: str, files: dict[str, bytes]) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def test_four_actors_on_a_node_fetch_a_folder_once(ray_local, s3_server, tmp_path):
    """Evaluation actors on one node localize the same model together: one downloads (its log says so), the
    others wait on the node lock and open the same complete copy."""
    import hashlib

    ray = ray_local
    files = {f"model-once/shard-{i:02d}.bin": os.urandom(1_000_000) for i in range(12)}  # long enough to overlap
    files["model-once/config.json"] = b"{}"
    _put_folder(s3_server, "once-bucket", files)
    expected = {key.removeprefix("model-once/"): hashlib.sha256(body).hexdigest() for key, body in files.items()}

    @ray.remote(num_cpus=0)
    class Reader:
        def ready(self) -> bool:
            return True

        def localize(self, url: str) -> tuple[str, dict[str, str], int]:
            import logging

            from components.models.remote import localize

            fetches = []
            handler = logging.Handler()
            handler.emit = lambda record: fetches.append(record.getMessage())
            logger = logging.getLogger("components.models.remote")
            logger.setLevel(logging.INFO)
            logger.addHandler(handler)
            folder = Path(localize(url))
            seen = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in folder.rglob("*") if p.is_file()}
            return str(folder), seen, sum(m.startswith("fetching s3://once-bucket/model-once") for m in fetches)

    env = {"env_vars": {"LLAVA_PIPELINE_CACHE": str(tmp_path / "cache")}}
    readers = [Reader.options(runtime_env=env).remote() for _ in range(4)]
    ray.get([r.ready.remote() for r in readers])  # all four up before any starts: the calls overlap
    results = ray.get([r.localize.remote("s3://once-bucket/model-once") for r in readers])
    assert sum(n for _, _, n in results) == 1  # one download on the node
    assert len({folder for folder, _, _ in results}) == 1
    assert all(seen == expected for _, seen, _ in results)
    for r in readers:
        ray.kill(r)


def test_a_fetch_cut_short_is_never_taken_for_the_folder(s3_server, tmp_path, monkeypatch):
    """A process that dies while fetching leaves a partial copy and its lock: the kernel drops the lock, and the
    next fetch neither waits for it nor takes its partial copy; it fetches the whole folder again."""
    monkeypatch.setenv("LLAVA_PIPELINE_CACHE", str(tmp_path / "cache"))
    _put_folder(s3_server, "cut-bucket", {"m/a.bin": b"a" * 1000, "m/b.bin": b"b" * 1000})
    target = Path(localize("s3://cut-bucket/m"))
    shutil.rmtree(target)  # as before any fetch
    key, partial = target.name, target.parent / f".partial-{target.name}-dead"
    crash = (f"import os\nfrom components.core.node_lock import node_lock\n"
             f"with node_lock({str(target.parent / f'.{key}.lock')!r}):\n"
             f"    os.makedirs({str(partial)!r})\n"
             f"    open({str(partial / 'a.bin')!r}, 'wb').write(b'a' * 10)\n"
             f"    os._exit(1)\n")
    assert subprocess.run([sys.executable, "-c", crash], timeout=60).returncode == 1
    assert partial.is_dir()

    again = Path(localize("s3://cut-bucket/m"))
    assert again == target and not partial.exists()
    assert (again / "a.bin").read_bytes() == b"a" * 1000 and (again / "b.bin").read_bytes() == b"b" * 1000
