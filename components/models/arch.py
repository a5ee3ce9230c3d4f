"""A checkpoint's architecture (its config.json) without its weights, found offline: what `plan` sizes from.

Where a `name_or_path` is looked up, first hit wins: an s3:// folder's config.json (one small read), a local
folder's config.json, the Hugging Face cache (a checkpoint used before on this machine), then the configs
shipped in `archconfigs/` for the paper recipe's Hub checkpoints. Nothing is downloaded from the Hub.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core import storage

SHIPPED = Path(__file__).parent / "archconfigs"


class ArchNotFound(ValueError):
    """No architecture config for a checkpoint here; the message names the key and how to provide one."""


@dataclass(frozen=True)
class Arch:
    config: dict[str, Any]  # config.json's fields (the shipped files' "_" notes removed)
    source: str  # where it was read: a path, "HF cache: …", or the shipped file's page
    tokenizer: dict[str, Any] = field(default_factory=dict)  # shipped configs: vocab_size, pad_token
    folder: str | None = None  # a local folder holding the checkpoint's files (tokenizer included), if any


def shipped_name(name: str) -> Path:
    return SHIPPED / (name.replace("/", "--") + ".json")


def _hf_cached(name: str, filename: str) -> str | None:
    """The path of `filename` of Hub repo `name` in this machine's HF cache, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(name, filename)
    except ValueError:  # not a valid repo id
        return None
    return hit if isinstance(hit, str) else None


def _from_file(text: str, source: str, folder: str | None) -> Arch:
    raw = json.loads(text)
    notes = {k: raw.pop(k) for k in [k for k in raw if k.startswith("_")]}
    return Arch(config=raw, source=notes.get("_source", source), tokenizer=notes.get("_tokenizer", {}),
                folder=folder)


def arch(name_or_path: str, key: str) -> Arch:
    """The architecture config of the checkpoint `name_or_path` (config key `key`, for messages)."""
    if storage.is_remote(name_or_path):
        path = storage.join(name_or_path, "config.json")
        try:
            return _from_file(storage.read_bytes(path).decode(), path, None)
        except (OSError, ValueError) as e:
            raise ArchNotFound(f"{key}={name_or_path!r}: cannot read {path} ({type(e).__name__}: {e})") from None
    local = Path(name_or_path.removeprefix("file://")).expanduser()
    if local.is_absolute() or local.exists():
        config = local / "config.json"
        if not config.is_file():
            raise ArchNotFound(f"{key}={name_or_path!r}: the folder has no config.json")
        return _from_file(config.read_text(), str(config), str(local))
    cached = _hf_cached(name_or_path, "config.json")
    if cached:
        return _from_file(Path(cached).read_text(), f"HF cache: {cached}", str(Path(cached).parent))
    if shipped_name(name_or_path).is_file():
        return _from_file(shipped_name(name_or_path).read_text(), str(shipped_name(name_or_path)), None)
    shipped = sorted(p.stem.replace("--", "/") for p in SHIPPED.glob("*.json"))
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    raise ArchNotFound(
        f"{key}={name_or_path!r}: no architecture config for it here: not a local folder, not in the Hugging Face "
        f"cache ({cache}), not one of the shipped configs ({', '.join(shipped)}). Fetch its config alone "
        f"(`hf download {name_or_path} config.json`), point {key} at a folder holding its config.json, or add "
        f"{shipped_name(name_or_path).relative_to(SHIPPED.parent.parent.parent)} with the config's fields and "
        "a _source")
