"""Conversation templates, rendered as segments that carry their own supervision flag.

A template turns a Sample into an ordered list of `Segment`s: text (masked or supervised), the image
placeholder, or the end-of-sequence token. Tokenization then concatenates per-segment tokens, so the
labels are right by construction — there is no offset arithmetic to get wrong.

- `plain` (pretrain): `<image>` + caption + "\\n"; the instruction is dropped, no system prompt, no EOS.
- `vicuna_v1` (finetune): `{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>`;
  assistant answers and their `</s>` are supervised, everything else is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .conversation import IMAGE_TOKEN, RecordError, Sample

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("plain", "vicuna_v1")
TemplateName = Literal["plain", "vicuna_v1"]

EOS_TEXT = "</s>"  # how the end-of-sequence segment is shown in rendered prompts


@dataclass(frozen=True)
class Segment:
    kind: Literal["text", "image", "eos"]
    text: str = ""
    supervised: bool = False


def _text_with_image(value: str, supervised: bool) -> list[Segment]:
    """Split a turn's text at `<image>` into text / image / text segments."""
    if IMAGE_TOKEN not in value:
        return [Segment("text", value, supervised)]
    before, after = value.split(IMAGE_TOKEN, 1)
    out = [Segment("text", before, supervised)] if before else []
    out.append(Segment("image"))
    if after:
        out.append(Segment("text", after, supervised))
    return out


def _plain(sample: Sample) -> list[Segment]:
    if len(sample.turns) != 2 or sample.image is None:
        raise RecordError(
            "plain_template_shape",
            f"{sample.where}: the plain (pretrain) template needs one image and exactly one human + one gpt turn",
        )
    return [Segment("image"), Segment("text", sample.turns[1].value + "\n", supervised=True)]


def _vicuna_v1(sample: Sample) -> list[Segment]:
    # Masked text runs up to and including "ASSISTANT:"; the space before the answer belongs to the
    # answer segment, so every boundary falls where a Llama tokenizer would split anyway.
    segs: list[Segment] = []
    prefix = VICUNA_SYSTEM + " "
    for t in sample.turns:
        if t.role == "human":
            segs.append(Segment("text", prefix + "USER: "))
            segs.extend(_text_with_image(t.value, supervised=False))
            segs.append(Segment("text", " ASSISTANT:"))
            prefix = ""
        else:
            segs.append(Segment("text", " " + t.value, supervised=True))
            segs.append(Segment("eos", supervised=True))
    return segs


def render_segments(sample: Sample, template: TemplateName) -> list[Segment]:
    """Segments of a full training conversation (the sample must end with an assistant turn)."""
    if template == "plain":
        return _plain(sample)
    if template == "vicuna_v1":
        return _merge_text(_vicuna_v1(sample))
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def generation_segments(question: str, template: TemplateName, *, has_image: bool) -> list[Segment]:
    """Segments of an inference prompt: `{system} USER: <image>\\n{q} ASSISTANT:` for vicuna_v1."""
    value = f"{IMAGE_TOKEN}\n{question}" if has_image else question
    if template == "plain":
        # A pretrain-stage model only captions: the prompt is the image alone.
        return [Segment("image")] if has_image else [Segment("text", question)]
    if template == "vicuna_v1":
        segs = [Segment("text", VICUNA_SYSTEM + " USER: "), *_text_with_image(value, False)]
        segs.append(Segment("text", " ASSISTANT:"))
        return _merge_text(segs)
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def _merge_text(segs: list[Segment]) -> list[Segment]:
    """Join neighbouring text segments with the same supervision, so tokenization sees whole strings."""
    out: list[Segment] = []
    for s in segs:
        if s.kind == "text" and not s.text:
            continue
        if out and s.kind == "text" and out[-1].kind == "text" and out[-1].supervised == s.supervised:
            out[-1] = Segment("text", out[-1].text + s.text, s.supervised)
        else:
            out.append(s)
    return out


def render_text(segments: list[Segment]) -> str:
    """The prompt as a string, exactly as the reference template prints it."""
    parts = []
    for s in segments:
        parts.append(IMAGE_TOKEN if s.kind == "image" else EOS_TEXT if s.kind == "eos" else s.text)
    return "".join(parts)
