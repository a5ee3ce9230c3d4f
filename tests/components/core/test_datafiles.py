"""Opening the file a record names: containment, non-regular files, byte caps, URLs (local and S3)."""

import os

import pytest

from components.core.datafiles import DataFileError, DataRoot, read, read_checked, resolve


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"A" * 10)
    (root / "sub" / "b.jpg").write_bytes(b"B")
    (tmp_path / "secret.txt").write_bytes(b"SECRET")
    (root / "out_link").symlink_to(tmp_path / "secret.txt")
    (root / "in_link").symlink_to(root / "a.jpg")
    (root / "dir_link").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    (root / "loop").symlink_to(root / "loop")
    return root


def reason(where, name):
    with pytest.raises(DataFileError) as e:
        read(where, name)
    return e.value.reason


def test_names_inside_the_root_are_read(tree):
    where = DataRoot(str(tree))
    assert read(where, "a.jpg") == (str(tree / "a.jpg"), b"A" * 10)
    assert read(where, "sub/../sub/b.jpg")[1] == b"B"
    assert read(where, "in_link")[1] == b"A" * 10  # a symlink that stays inside is fine


@pytest.mark.parametrize("name", ["../secret.txt", "sub/../../secret.txt", "out_link", "dir_link/secret.txt",
                                  "/dev/zero", "/etc/passwd"])
def test_escapes_are_refused_before_opening(tree, name):
    assert reason(DataRoot(str(tree)), name) == "image_outside_root"


@pytest.mark.parametrize("name", [".", "sub", "fifo", "a.jpg/x"])
def test_non_regular_files_are_refused(tree, name):
    assert reason(DataRoot(str(tree)), name) == "image_not_a_file"


def test_trusted_root_reads_absolute_paths_but_only_regular_files(tree):
    where = DataRoot(str(tree), allow_absolute=True)
    assert read(where, str(tree.parent / "secret.txt"))[1] == b"SECRET"
    assert reason(where, "/dev/zero") == "image_not_a_file"
    assert reason(where, str(tree / "fifo")) == "image_not_a_file"


def test_urls_under_a_local_root_are_refused(tree):
    for name in ("http://127.0.0.1:9/a.jpg", "s3://bucket/a.jpg", "file:///etc/passwd", "memory://x"):
        assert reason(DataRoot(str(tree)), name) == "image_is_url"


def test_bytes_are_capped_and_missing_named(tree):
    with pytest.raises(DataFileError, match="10 bytes, over the limit of 9") as e:
        read(DataRoot(str(tree), max_bytes=9), "a.jpg")
    assert e.value.reason == "image_too_large"
    assert reason(DataRoot(str(tree)), "nope.jpg") == "missing_image"
    assert reason(DataRoot(str(tree)), "a\0.jpg") == "missing_image"
    with pytest.raises(DataFileError) as e:
        read_checked("/dev/zero")
    assert e.value.reason == "image_not_a_file"
    assert reason(DataRoot(str(tree)), "loop") == "image_unreadable"  # a symlink loop: stat fails (ELOOP)
    # A file larger than its stat said (procfs reports size 0): the read itself stops at the cap.
    with pytest.raises(DataFileError, match="over the limit of 10") as e:
        read_checked("/proc/self/status", max_bytes=10)
    assert e.value.reason == "image_too_large"


def test_remote_names_stay_under_the_remote_root():
    where = DataRoot("s3://bucket/data/images")
    assert resolve(where, "x/a.jpg") == "s3://bucket/data/images/x/a.jpg"
    assert resolve(where, "s3://bucket/data/images/a.jpg") == "s3://bucket/data/images/a.jpg"
    for name, why in (("../a.jpg", "image_outside_root"), ("/data/images/a.jpg", "image_outside_root"),
                      ("s3://bucket/data/imagesX/a.jpg", "image_outside_root"), ("s3://other/a.jpg", "image_outside_root"),
                      ("https://host/a.jpg", "image_is_url"), (".", "image_outside_root")):
        with pytest.raises(DataFileError) as e:
            resolve(where, name)
        assert e.value.reason == why, name
    assert resolve(DataRoot("s3://bucket/data", allow_absolute=True), "s3://other/a.jpg") == "s3://other/a.jpg"


def test_s3_reads_are_capped(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("datafiles-bucket")
    fs.pipe("datafiles-bucket/imgs/a.jpg", b"A" * 10)
    fs.pipe("datafiles-bucket/imgs/dir/b.jpg", b"B")
    where = DataRoot("s3://datafiles-bucket/imgs")
    assert read(where, "a.jpg")[1] == b"A" * 10
    assert reason(DataRoot("s3://datafiles-bucket/imgs", max_bytes=9), "a.jpg") == "image_too_large"
    assert reason(where, "dir") == "image_not_a_file"
    assert reason(where, "nope.jpg") == "missing_image"
