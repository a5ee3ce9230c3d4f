"""Open a data file that a record names (a training image, a benchmark image): the one way to do it.

Records come from other people, so the name a record gives is untrusted. A name is resolved against its
root (symlinks resolved) and must stay under it; a URL is taken only when the root itself is remote; only
regular files are read (never a FIFO, a device or a directory) and at most `max_bytes` of them. Every
refusal is a `DataFileError` whose `reason` is the record's rejection reason.
`allow_absolute=True` (for a trusted dataset) accepts absolute paths and URLs anywhere.
"""

from __future__ import annotations

import functools
import os
import posixpath
import stat
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # far above any real image; bounds what one record can make us read

REASONS = ("missing_image", "image_outside_root", "image_is_url", "image_not_a_file", "image_too_large",
           "image_unreadable")


class DataFileError(ValueError):
    """A data file a record names that cannot be read; `reason` is one of REASONS, the message names the path."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DataRoot:
    """Where a dataset's files live, and how far its records are trusted."""

    root: str  # local folder or URL (s3://bucket/prefix)
    allow_absolute: bool = False  # trusted dataset: absolute paths and URLs anywhere are accepted
    max_bytes: int = DEFAULT_MAX_BYTES


def _has_scheme(name: str) -> bool:
    head = name.split("/", 1)[0]
    return "://" in name or (head.endswith(":") and len(head) > 2)  # "file:x", "http:..."; not "C:"


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)  # one lstat per path component: per record, only the name's are needed


def resolve(where: DataRoot, name: str) -> str:
    """The path or URL to read for `name`, checked against the root (nothing is opened)."""
    if not name or "\0" in name:
        raise DataFileError("missing_image", f"{name!r}: not a file name")
    if _is_remote(where.root):
        return _resolve_remote(where, name)
    if _has_scheme(name):
        if where.allow_absolute and _is_remote(name):
            return name
        raise DataFileError("image_is_url", f"{name}: a URL, but the image root {where.root} is a local folder")
    root = _real_root(where.root.removeprefix("file://"))
    real = os.path.realpath(os.path.join(root, name))  # an absolute name replaces the root here
    if not where.allow_absolute and real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise DataFileError("image_outside_root", f"{name}: resolves to {real}, outside the image root {root}")
    return real


def _resolve_remote(where: DataRoot, name: str) -> str:
    scheme, root = where.root.split("://", 1)
    root = posixpath.normpath("/" + root).lstrip("/")
    if _has_scheme(name):
        if not name.startswith(f"{scheme}://"):
            raise DataFileError("image_is_url", f"{name}: not a {scheme}:// URL like the image root {where.root}")
        path = posixpath.normpath("/" + name.split("://", 1)[1]).lstrip("/")
    elif name.startswith("/"):
        path = posixpath.normpath(name).lstrip("/") if where.allow_absolute else ""
        if not path:
            raise DataFileError("image_outside_root", f"{name}: an absolute path under the remote root {where.root}")
    else:
        path = posixpath.normpath(posixpath.join("/" + root, name)).lstrip("/")
    if not where.allow_absolute and not path.startswith(root.rstrip("/") + "/"):
        raise DataFileError("image_outside_root", f"{name}: resolves to {scheme}://{path}, outside {where.root}")
    return f"{scheme}://{path}"


def read(where: DataRoot, name: str) -> tuple[str, bytes]:
    """(resolved path, bytes) of the file `name` under `where`; DataFileError for anything else."""
    path = resolve(where, name)
    return path, read_checked(path, where.max_bytes)


def read_checked(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file at an already resolved path or URL, at most `max_bytes` of them."""
    try:
        return _read_remote(path, max_bytes) if _is_remote(path) else _read_local(path, max_bytes)
    except FileNotFoundError:
        raise DataFileError("missing_image", f"{path}: does not exist") from None
    except (IsADirectoryError, NotADirectoryError) as e:
        raise DataFileError("image_not_a_file", f"{path}: not a regular file ({e.strerror or e})") from None
    except OSError as e:  # permissions, I/O errors, remote errors
        raise DataFileError("image_unreadable", f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def _too_large(path: str, size: int, max_bytes: int) -> DataFileError:
    return DataFileError("image_too_large", f"{path}: file is {size:,} bytes, over the limit of {max_bytes:,}")


def _read_local(path: str, max_bytes: int) -> bytes:
    # stat before open, so a FIFO is never opened; O_NONBLOCK and the fstat after open cover a file
    # swapped in between; O_NOFOLLOW refuses a symlink put in its place.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise DataFileError("image_not_a_file", f"{path}: not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataFileError("image_not_a_file", f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise _too_large(path, info.st_size, max_bytes)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew after the stat
        raise _too_large(path, len(data), max_bytes)
    return data


def _read_remote(path: str, max_bytes: int) -> bytes:
    from fsspec.core import url_to_fs

    fs, inner = url_to_fs(path)
    info = fs.info(inner)
    if info.get("type", "file") != "file":
        raise DataFileError("image_not_a_file", f"{path}: not a file (a {info.get('type')})")
    size = info.get("size")
    if isinstance(size, int) and size > max_bytes:
        raise _too_large(path, size, max_bytes)
    with fs.open(inner, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(path, len(data), max_bytes)
    return data
