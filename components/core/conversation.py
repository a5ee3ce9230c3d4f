"""LLaVA conversation records: parse, validate and normalise.

A record is `{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value": str}, ...]}`. Every
problem is a `RecordError` with a reason code (counted by `prepare`) and a message that names the file,
the record and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

IMAGE_TOKEN = "<image>"

Role = Literal["human", "gpt"]

# Reason codes, one per way a record can be unusable. `prepare` counts rejections by these names.
REASONS = (
    "malformed_json",
    "not_a_list",
    "line_too_long",
    "invalid_utf8",
    "not_an_object",
    "missing_id",
    "invalid_id",
    "duplicate_id",
    "missing_conversations",
    "bad_role",
    "roles_not_alternating",
    "empty_value",
    "image_token_without_image",
    "image_without_image_token",
    "multiple_image_tokens",
    "image_token_in_assistant_turn",
    "special_token_text",
    "multiple_images",
    "plain_template_shape",
    "missing_image",
    "corrupt_image",
    "truncated_image",
    "image_too_large",
    "unsupported_image",
    "image_outside_root",
    "image_is_url",
    "image_not_a_file",
    "image_unreadable",
    "image_aspect_ratio",
    "over_length",
    "no_supervised_tokens",
    "unexpected_error",  # any other exception while processing the record (type and message kept)
)


class RecordError(ValueError):
    """A record that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Turn:
    role: Role
    value: str


@dataclass(frozen=True)
class Sample:
    id: str
    image: str | None
    turns: tuple[Turn, ...]
    source: str = "<memory>"
    index: int = 0  # position in the source file (list index, or line number for JSONL)

    @property
    def where(self) -> str:
        return f"{self.source} record {self.index} (id {self.id!r})"


def _where(source: str, index: int, rid: Any) -> str:
    return f"{source} record {index}" + (f" (id {rid!r})" if rid is not None else "")


def parse_record(obj: Any, *, source: str = "<memory>", index: int = 0) -> Sample:
    """Validate one record and return it as a Sample (roles alternate, starting with human)."""
    if not isinstance(obj, dict):
        raise RecordError("not_an_object", f"{_where(source, index, None)}: expected a JSON object")
    rid = obj.get("id")
    where = _where(source, index, rid)
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        raise RecordError("missing_id", f"{where}: field 'id' is missing or empty")
    if isinstance(rid, bool) or not isinstance(rid, str | int):  # `true` would become the id "True"
        raise RecordError("invalid_id", f"{where}: field 'id' must be a string or an integer, got {rid!r}")
    convs = obj.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise RecordError("missing_conversations", f"{where}: field 'conversations' must be a non-empty list")
    image = obj.get("image")
    if isinstance(image, list) and len(image) > 1:
        raise RecordError("multiple_images", f"{where}: field 'image' lists {len(image)} images; LLaVA-1.5 "
                          "takes one per conversation")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise RecordError("empty_value", f"{where}: field 'image' must be a non-empty string")

    turns: list[Turn] = []
    for i, turn in enumerate(convs):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RecordError("bad_role", f"{where}: {field} must be an object with 'from' and 'value'")
        role = turn.get("from")
        if role not in ("human", "gpt"):
            raise RecordError("bad_role", f"{where}: {field}.from is {role!r}, expected 'human' or 'gpt'")
        expected = "human" if i % 2 == 0 else "gpt"
        if role != expected:
            raise RecordError(
                "roles_not_alternating",
                f"{where}: {field}.from is {role!r} but turns must alternate starting with 'human'",
            )
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise RecordError("empty_value", f"{where}: {field}.value is empty or not a string")
        turns.append(Turn(role, value))
    if turns[-1].role != "gpt":
        raise RecordError("roles_not_alternating", f"{where}: the last turn must be from 'gpt'")

    counts = [t.value.count(IMAGE_TOKEN) for t in turns]
    for i, (t, n) in enumerate(zip(turns, counts, strict=True)):
        if n and t.role == "gpt":
            raise RecordError(
                "image_token_in_assistant_turn", f"{where}: conversations[{i}].value holds {IMAGE_TOKEN}"
            )
    total = sum(counts)
    if total > 1:
        raise RecordError("multiple_image_tokens", f"{where}: {total} {IMAGE_TOKEN} tokens, at most 1 allowed")
    if total and image is None:
        raise RecordError("image_token_without_image", f"{where}: {IMAGE_TOKEN} in the text but no 'image' field")
    if image is not None and not total:
        raise RecordError("image_without_image_token", f"{where}: 'image' is set but no turn holds {IMAGE_TOKEN}")
    return Sample(id=str(rid), image=image, turns=tuple(turns), source=source, index=index)


def normalize_image_token(sample: Sample) -> Sample:
    """Move `<image>` to the start of its turn, followed by a newline (as the reference does)."""
    turns = []
    for t in sample.turns:
        if IMAGE_TOKEN in t.value:
            rest = t.value.replace(IMAGE_TOKEN, "").strip()
            t = replace(t, value=f"{IMAGE_TOKEN}\n{rest}".strip())
        turns.append(t)
    return replace(sample, turns=tuple(turns))


def word_length(sample: Sample) -> int:
    """Whitespace word count over all turns: the reference's length for modality grouping."""
    return sum(len(t.value.split()) for t in sample.turns)
