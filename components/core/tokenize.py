"""Tokenization with labels built by construction.

Each template segment is tokenized on its own and the pieces are concatenated: supervised segments keep
their ids as labels, everything else gets IGNORE_INDEX. BOS is added once. The image placeholder becomes
`num_image_tokens` copies of the tokenizer's `<image>` id (transformers' Llava convention: the model
replaces those positions with projected image features).

A text segment that does not start the sequence is tokenized as the tokenizer sees text right after a
special token (we prefix the `<image>` token and drop it), so the concatenation equals what the tokenizer
gives for the whole rendered string — the reference's "tokenization mismatch" cannot happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .conversation import IMAGE_TOKEN, RecordError, Sample
from .templates import Segment, TemplateName, generation_segments, render_segments, render_text

IGNORE_INDEX = -100


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def convert_tokens_to_ids(self, token: str) -> int: ...


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    prompt: str  # the rendered template, `<image>` once
    num_image_tokens: int  # image positions in input_ids (0 for text-only samples)
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _encode_segment(tok: Tokenizer, text: str, *, at_start: bool, image_id: int) -> list[int]:
    if at_start:
        return list(tok.encode(text, add_special_tokens=False))
    ids = list(tok.encode(IMAGE_TOKEN + text, add_special_tokens=False))
    if not ids or ids[0] != image_id:
        raise ValueError(f"tokenizer does not treat {IMAGE_TOKEN} as a special token; add it first")
    return ids[1:]


def encode_segments(
    tok: Tokenizer, segments: list[Segment], num_image_tokens: int
) -> tuple[list[int], list[int]]:
    """Concatenate per-segment tokens; returns (input_ids, labels) with BOS once at the start."""
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = []
    labels: list[int] = []
    if tok.bos_token_id is not None:
        ids.append(tok.bos_token_id)
        labels.append(IGNORE_INDEX)
    for i, seg in enumerate(segments):
        if seg.kind == "image":
            piece = [image_id] * num_image_tokens
        elif seg.kind == "eos":
            assert tok.eos_token_id is not None
            piece = [tok.eos_token_id]
        else:
            piece = _encode_segment(tok, seg.text, at_start=i == 0, image_id=image_id)
        ids.extend(piece)
        labels.extend(piece if seg.supervised else [IGNORE_INDEX] * len(piece))
    return ids, labels


def tokenize_sample(
    sample: Sample, tok: Tokenizer, *, template: TemplateName, num_image_tokens: int, max_length: int
) -> TokenizedSample:
    """Render and tokenize one conversation; truncate to max_length, never inside the image tokens.

    Raises RecordError("over_length") when the image block itself does not fit, and
    RecordError("no_supervised_tokens") when truncation leaves nothing to learn.
    """
    segments = render_segments(sample, template)
    n_img = num_image_tokens if sample.image is not None else 0
    ids, labels = encode_segments(tok, segments, n_img)
    truncated = len(ids) > max_length
    if truncated:
        image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        last_image = max((i for i, t in enumerate(ids) if t == image_id), default=-1)
        if last_image >= max_length:
            raise RecordError(
                "over_length",
                f"{sample.where}: max_length {max_length} would cut into the {n_img} image tokens",
            )
        ids, labels = ids[:max_length], labels[:max_length]
    result = TokenizedSample(ids, labels, render_text(segments), n_img, truncated)
    if result.num_supervised == 0:
        raise RecordError("no_supervised_tokens", f"{sample.where}: no supervised tokens within max_length")
    return result


def tokenize_prompt(
    question: str, tok: Tokenizer, *, template: TemplateName, num_image_tokens: int, has_image: bool
) -> list[int]:
    """Input ids of an inference prompt, built by the same segment code as training."""
    segments = generation_segments(question, template, has_image=has_image)
    ids, _ = encode_segments(tok, segments, num_image_tokens if has_image else 0)
    return ids


def supervised_spans(labels: list[int]) -> list[list[int]]:
    """Maximal runs of supervised label ids, in order."""
    spans: list[list[int]] = []
    current: list[int] = []
    for x in labels:
        if x == IGNORE_INDEX:
            if current:
                spans.append(current)
                current = []
        else:
            current.append(x)
    if current:
        spans.append(current)
    return spans
