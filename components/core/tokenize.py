"""Tokenization with labels built by construction.

Each template segment is tokenized on its own and the pieces are concatenated: supervised segments keep
their ids as labels, everything else gets IGNORE_INDEX. BOS is added once. The image placeholder becomes
`num_image_tokens` copies of the tokenizer's `<image>` id (transformers' Llava convention: the model
replaces those positions with projected image features).

A text segment that does not start the sequence is tokenized as the tokenizer sees text right after a
special token, so the concatenation equals what the tokenizer gives for the whole rendered string — the
reference's "tokenization mismatch" cannot happen. Shards store the compact form (one `<image>` id);
`expand_image_tokens` makes the model's form for a given resolution.
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

    def __call__(self, text: list[str], add_special_tokens: bool = ...) -> dict[str, list[list[int]]]: ...
    def convert_tokens_to_ids(self, token: str) -> int: ...


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    prompt: str  # the rendered template, `<image>` once
    num_image_tokens: int  # image positions in input_ids (0 for text-only samples; 1 in compact form)
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def encode_texts(tok: Tokenizer, texts: list[str], at_start: list[bool]) -> list[list[int]]:
    """Tokenize many text segments in one batched call.

    A segment that does not start the sequence is tokenized as the tokenizer sees text right after a
    special token: we prefix `<image>` and drop it again.
    """
    if not texts:
        return []
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    batch = [t if first else IMAGE_TOKEN + t for t, first in zip(texts, at_start, strict=True)]
    encoded = tok(batch, add_special_tokens=False)["input_ids"]
    out = []
    for ids, first in zip(encoded, at_start, strict=True):
        if not first:
            if not ids or ids[0] != image_id:
                raise ValueError(f"tokenizer does not treat {IMAGE_TOKEN} as a special token; add it first")
            ids = ids[1:]
        out.append(list(ids))
    return out


def encode_many(tok: Tokenizer, segment_lists: list[list[Segment]]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) for many segment lists, with one batched tokenizer call.

    BOS is added once at the start; the image placeholder is one `<image>` id (see expand_image_tokens);
    supervised segments keep their ids as labels, the rest get IGNORE_INDEX.
    """
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    texts, starts = [], []
    for segs in segment_lists:
        for i, seg in enumerate(segs):
            if seg.kind == "text":
                texts.append(seg.text)
                starts.append(i == 0)
    pieces = iter(encode_texts(tok, texts, starts))
    results = []
    for segs in segment_lists:
        ids: list[int] = []
        labels: list[int] = []
        if tok.bos_token_id is not None:
            ids.append(tok.bos_token_id)
            labels.append(IGNORE_INDEX)
        for seg in segs:
            if seg.kind == "image":
                piece = [image_id]
            elif seg.kind == "eos":
                assert tok.eos_token_id is not None
                piece = [tok.eos_token_id]
            else:
                piece = next(pieces)
            ids.extend(piece)
            labels.extend(piece if seg.supervised else [IGNORE_INDEX] * len(piece))
        results.append((ids, labels))
    return results


def expand_image_tokens(
    ids: list[int], labels: list[int], *, image_id: int, num_image_tokens: int, max_length: int
) -> tuple[list[int], list[int], bool]:
    """Expand the single `<image>` id to the tower's token count and truncate to max_length.

    Prepared shards keep one `<image>` id per sample, so one prepared dataset serves every resolution;
    the collator expands it for the run at hand. Returns (ids, labels, truncated). Raises ValueError when
    max_length would cut into the image tokens.
    """
    if image_id in ids:
        at = ids.index(image_id)
        n = num_image_tokens
        ids = ids[:at] + [image_id] * n + ids[at + 1 :]
        labels = labels[:at] + [IGNORE_INDEX] * n + labels[at + 1 :]
        if at + n > max_length:
            raise ValueError(f"max_length {max_length} would cut into the {n} image tokens")
    truncated = len(ids) > max_length
    return ids[:max_length], labels[:max_length], truncated


def special_token_texts(tok: Tokenizer) -> frozenset[str]:
    """The strings the tokenizer turns into special tokens wherever they appear in text."""
    found = getattr(tok, "special_token_texts", None)  # JsonTokenizer knows its own
    if found is not None:
        return frozenset(found)
    texts = set(getattr(tok, "all_special_tokens", []) or [])
    decoder = getattr(tok, "added_tokens_decoder", None) or {}
    texts.update(t.content for t in decoder.values() if getattr(t, "special", False))
    return frozenset(t for t in texts if t)


def check_plain_text(text: str, specials: frozenset[str], where: str) -> None:
    """RecordError("special_token_text") when `text` holds a special token's string: a literal `</s>` in an
    answer would be tokenized as EOS (and supervised there), at train and eval time alike."""
    for token in sorted(specials):
        if token in text:
            raise RecordError("special_token_text", f"{where} holds {token!r}, the text of a special token; "
                              "it would be read as that token, not as text")


def tokenize_samples(
    samples: list[Sample], tok: Tokenizer, *, template: TemplateName
) -> list[TokenizedSample | RecordError]:
    """Render and tokenize conversations in one batch (compact form: one `<image>` id each).

    A sample that cannot be rendered, or whose text holds a special token's string, comes back as its
    RecordError, in place.
    """
    specials = special_token_texts(tok) - {IMAGE_TOKEN}  # `<image>` has its own rules (parse_record)
    rendered: list[list[Segment] | RecordError] = []
    for s in samples:
        try:
            for i, turn in enumerate(s.turns):
                check_plain_text(turn.value, specials, f"{s.where}: conversations[{i}].value")
            rendered.append(render_segments(s, template))
        except RecordError as e:
            rendered.append(e)
    ok = [r for r in rendered if not isinstance(r, RecordError)]
    encoded = iter(encode_many(tok, ok))
    out: list[TokenizedSample | RecordError] = []
    for s, r in zip(samples, rendered, strict=True):
        if isinstance(r, RecordError):
            out.append(r)
            continue
        ids, labels = next(encoded)
        out.append(TokenizedSample(ids, labels, render_text(r), 1 if s.image is not None else 0, False))
    return out


def fit_sample(
    sample: Sample, tokenized: TokenizedSample, *, image_id: int, num_image_tokens: int, max_length: int
) -> TokenizedSample:
    """Expand image tokens and truncate; errors name the record.

    Raises RecordError("over_length") when the image block itself does not fit, and
    RecordError("no_supervised_tokens") when truncation leaves nothing to learn.
    """
    try:
        ids, labels, truncated = expand_image_tokens(
            tokenized.input_ids, tokenized.labels, image_id=image_id,
            num_image_tokens=num_image_tokens, max_length=max_length,
        )
    except ValueError as e:
        raise RecordError("over_length", f"{sample.where}: {e}") from None
    n_img = num_image_tokens if tokenized.num_image_tokens else 0
    result = TokenizedSample(ids, labels, tokenized.prompt, n_img, truncated)
    if result.num_supervised == 0:
        raise RecordError("no_supervised_tokens", f"{sample.where}: no supervised tokens within max_length")
    return result


def tokenize_sample(
    sample: Sample, tok: Tokenizer, *, template: TemplateName, num_image_tokens: int, max_length: int
) -> TokenizedSample:
    """One conversation, image tokens expanded and truncated to max_length (what the model sees)."""
    (compact,) = tokenize_samples([sample], tok, template=template)
    if isinstance(compact, RecordError):
        raise compact
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    return fit_sample(sample, compact, image_id=image_id, num_image_tokens=num_image_tokens,
                      max_length=max_length)


def tokenize_prompt(
    question: str, tok: Tokenizer, *, template: TemplateName, num_image_tokens: int, has_image: bool
) -> list[int]:
    """Input ids of an inference prompt, built by the same segment code as training. A question holding a
    special token's string is a RecordError("special_token_text"), as the same text is at training."""
    check_plain_text(question, special_token_texts(tok), "the question")
    segments = generation_segments(question, template, has_image=has_image)
    ((ids, labels),) = encode_many(tok, [segments])
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    ids, _, _ = expand_image_tokens(ids, labels, image_id=image_id, num_image_tokens=num_image_tokens,
                                    max_length=len(ids) + num_image_tokens)
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
