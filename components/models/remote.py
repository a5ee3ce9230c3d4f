"""Remote folders (s3://…) made local on the node that reads them: the one way inputs are fetched.

A checkpoint for `from_pretrained`, a benchmark folder's question and annotation files: whoever opens them
calls `localize` on its own node (a cluster's nodes share no disk, only the storage root), never a path
another node prepared. HF hub names and local paths pass through untouched (the hub has its own cache). A
remote folder is cached under a key built from its URL and its files' sizes and ETags, so a changed folder
is fetched again. Many processes on one node (evaluation actors, one per GPU) fetch a folder once: the first
to take the key's node lock downloads, the others wait and reuse its copy. Single data files (images) are read
where they are, through components.core.datafiles.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from components.core.node_lock import node_lock
from components.core.storage import filesystem, is_remote

CACHE_ENV = "LLAVA_PIPELINE_CACHE"
log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where remote checkpoints are copied; `$LLAVA_PIPELINE_CACHE` or ~/.cache/llava-pipeline."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "llava-pipeline"


def _inside(folder: Path, rel: str, what: str) -> Path:
    """folder/rel, refused unless it stays inside `folder`: an object key is someone else's text, and a key
    with "../" (S3 allows them) must not write outside the cache."""
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in ("..", ".") for p in parts):
        raise ValueError(f"{what} does not name a file inside the checkpoint folder; refusing to copy it")
    return folder.joinpath(*parts)


def localize(name_or_path: str, exclude: tuple[str, ...] = ()) -> str:
    """A local folder (in this node's cache) for a remote folder URL; anything else is returned as given.

    `exclude`: subfolders (relative) left out of the copy, e.g. a benchmark's image folder, which readers
    open file by file from the URL instead. One process per node downloads (the others wait on the key's
    lock), into a temporary sibling renamed when whole: a copy cut short by a crash is never taken for the folder.
    """
    if not is_remote(name_or_path):
        return name_or_path.removeprefix("file://")
    fs, root = filesystem(name_or_path)
    try:
        listing = fs.find(root, detail=True)
    except OSError as e:
        raise FileNotFoundError(f"{name_or_path}: cannot list the checkpoint folder ({e})") from None
    prefix = root.rstrip("/") + "/"
    skipped = tuple(prefix + e.strip("/") + "/" for e in exclude if e.strip("/"))
    files = {p: info for p, info in listing.items()
             if info.get("type", "file") == "file" and not p.startswith(skipped)}
    if not files:
        raise FileNotFoundError(f"{name_or_path}: no files found (expected a folder of files)")

    digest = hashlib.sha256(name_or_path.encode())
    digest.update("\0".join(sorted(skipped)).encode())  # a partial copy never stands for the whole folder
    for path in sorted(files):
        info = files[path]
        tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        digest.update(f"\0{path}\0{info.get('size')}\0{tag}".encode())
    key = digest.hexdigest()[:24]
    target = cache_root() / "remote" / key
    if target.is_dir():
        return str(target)
    with node_lock(target.parent / f".{key}.lock"):
        if target.is_dir():  # fetched by another process of this node while this one waited
            return str(target)
        for stale in target.parent.glob(f".partial-{key}-*"):  # a crashed fetch's leftovers (it held the lock)
            shutil.rmtree(stale, ignore_errors=True)
        size = sum(int(info.get("size") or 0) for info in files.values())
        log.info("fetching %s: %d files, %.1f MB, into %s", name_or_path, len(files), size / 1e6, target)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".partial-{key}-"))
        try:
            for path in files:
                dest = _inside(staging, path[len(prefix) :] if path.startswith(prefix) else Path(path).name,
                               f"{name_or_path}: key {path!r}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(dest))
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
