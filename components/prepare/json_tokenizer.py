"""A saved tokenizer's tokenizer.json, served by the `tokenizers` library without importing transformers.

`prepare` workers only encode text, yet importing transformers pulls in torch: about 5 CPU-seconds and
~0.5 GB per worker process before the first record. A folder written by transformers 5's `save_pretrained` for a
tokenizers-backed tokenizer (what `prepare` always hands its workers) holds the whole pipeline in
tokenizer.json, and transformers encodes by calling that same pipeline's `encode_batch` — so the ids are
identical. Anything else (no tokenizer.json, another backend, missing LLaVA tokens) gets None, and the
caller falls back to transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.core.conversation import IMAGE_TOKEN

CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"


class JsonTokenizer:
    """The part of the `Tokenizer` protocol (components.core.tokenize) that `prepare` uses."""

    def __init__(self, backend: object, bos_token: str | None, eos_token: str | None, unk_token: str | None) -> None:
        self.backend = backend
        self.special_token_texts = frozenset(
            t.content for t in backend.get_added_tokens_decoder().values() if t.special)
        # transformers encodes without truncation or padding unless asked.
        backend.no_truncation()
        backend.no_padding()
        self.bos_token_id = self._id(bos_token)
        self.eos_token_id = self._id(eos_token)
        self.unk_token_id = self._id(unk_token)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def __call__(self, text: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        encodings = self.backend.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings]}

    def convert_tokens_to_ids(self, token: str) -> int:
        found = self.backend.token_to_id(token)
        if found is not None:
            return found
        if self.unk_token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary and the tokenizer has no unk token")
        return self.unk_token_id


def _token(value: object) -> str | None:
    # tokenizer_config.json stores special tokens as strings or as AddedToken dicts.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_json_tokenizer(path: str) -> JsonTokenizer | None:
    """The tokenizer in local folder `path`, or None when it cannot be served without transformers."""
    folder = Path(path)
    if "://" in path or not (folder / TOKENIZER_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        return None
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("backend") != "tokenizers":
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    pad = _token(config.get("pad_token"))
    # components.models.tokenizer.load_tokenizer adds these when missing; only a folder that has them
    # already encodes the same without it.
    if IMAGE_TOKEN not in special or pad is None or pad not in special:
        return None
    return JsonTokenizer(backend, _token(config.get("bos_token")), _token(config.get("eos_token")),
                         _token(config.get("unk_token")))
