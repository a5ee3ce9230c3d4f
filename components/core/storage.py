"""Paths that may be local or `s3://`, through fsspec (s3fs for S3).

Credentials and endpoints come from the standard AWS environment/config (AWS_ACCESS_KEY_ID,
AWS_ENDPOINT_URL, ~/.aws/...); nothing here stores or prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', keeping a URL scheme intact."""
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return posixpath.join(base, *parts)


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a local path or URL."""
    return url_to_fs(path)


def pyarrow_filesystem(path: str) -> tuple[Any, str]:
    """A pyarrow filesystem (for Ray Data / Ray Train) and the path within it."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    fs, inner = filesystem(path)
    if not is_remote(path):
        return LocalFileSystem(), inner
    return PyFileSystem(FSSpecHandler(fs)), inner


def read_bytes(path: str) -> bytes:
    if "://" not in path:  # a plain local path: skip fsspec's URL parsing, a third of a small read's cost
        with open(path, "rb") as f:
            return f.read()
    fs, inner = filesystem(path)
    with fs.open(inner, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the old content or the new, never a part (local files via
    a temporary sibling and rename; an object-store PUT is atomic already)."""
    if not is_remote(path):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.")
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other users of a shared root
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    fs, inner = filesystem(path)
    parent = posixpath.dirname(inner)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(inner, "wb") as f:
        f.write(data)


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.exists(inner)


def remove(path: str) -> None:
    """Delete a file or folder (recursively) if it exists."""
    fs, inner = filesystem(path)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)


def makedirs(path: str) -> None:
    fs, inner = filesystem(path)
    fs.makedirs(inner, exist_ok=True)


@contextlib.contextmanager
def staged_dir(path: str) -> Iterator[str]:
    """A local folder standing for `path`, for code that only writes local files.

    A local `path` is used as is. For a remote one the block writes to a temporary folder, uploaded to
    `path` only when the block succeeds, so a failure leaves nothing half-written there.
    """
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="llava-stage-") as tmp:
        yield tmp
        upload_dir(tmp, path)


def upload_dir(local_dir: str, path: str) -> None:
    """Copy a local folder's contents into `path` (local path or URL)."""
    fs, inner = filesystem(path)
    fs.makedirs(inner, exist_ok=True)
    fs.put(str(local_dir).rstrip("/") + "/", inner.rstrip("/") + "/", recursive=True)
