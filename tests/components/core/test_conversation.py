import pytest

from components.core.conversation import RecordError, normalize_image_token, parse_record
from components.core.templates import (
    VICUNA_SYSTEM,
    generation_segments,
    render_segments,
    render_text,
)

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)


def rec(*values, image="a.jpg", rid="r1"):
    convs = [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]
    out = {"id": rid, "conversations": convs}
    if image is not None:
        out["image"] = image
    return out


def test_system_prompt_is_exact():
    assert VICUNA_SYSTEM == SYSTEM


def test_vicuna_v1_golden_multi_turn():
    s = normalize_image_token(parse_record(rec("What colour?\n<image>", "Blue.", "And the shape?", "A circle.")))
    text = render_text(render_segments(s, "vicuna_v1"))
    assert text == (
        SYSTEM + " USER: <image>\nWhat colour? ASSISTANT: Blue.</s>USER: And the shape? ASSISTANT: A circle.</s>"
    )


def test_vicuna_v1_golden_text_only():
    s = parse_record(rec("What is 2+2?", "4", image=None))
    assert render_text(render_segments(s, "vicuna_v1")) == SYSTEM + " USER: What is 2+2? ASSISTANT: 4</s>"


def test_plain_golden_drops_instruction():
    s = normalize_image_token(parse_record(rec("Describe the photo briefly. <image>", "a red circle")))
    segs = render_segments(s, "plain")
    assert render_text(segs) == "<image>a red circle\n"
    assert [(x.kind, x.supervised) for x in segs] == [("image", False), ("text", True)]


def test_generation_prompt_golden():
    segs = generation_segments("What colour?\nAnswer the question using a single word or phrase.", "vicuna_v1",
                               has_image=True)
    assert render_text(segs) == (
        SYSTEM + " USER: <image>\nWhat colour?\nAnswer the question using a single word or phrase. ASSISTANT:"
    )


def test_supervision_flags_vicuna():
    s = normalize_image_token(parse_record(rec("<image> q1", "a1", "q2", "a2")))
    sup = [(x.kind, x.text) for x in render_segments(s, "vicuna_v1") if x.supervised]
    assert sup == [("text", " a1"), ("eos", ""), ("text", " a2"), ("eos", "")]


@pytest.mark.parametrize(("value", "expected"), [
    ("<image>\nWhat?", "<image>\nWhat?"),
    ("What?<image>", "<image>\nWhat?"),
    ("What <image> is this?", "<image>\nWhat  is this?"),
    ("  <image>  ", "<image>"),
])
def test_image_token_moves_to_turn_start(value, expected):
    s = normalize_image_token(parse_record(rec(value, "x")))
    assert s.turns[0].value == expected


@pytest.mark.parametrize(("record", "reason", "fragment"), [
    ([1, 2], "not_an_object", "expected a JSON object"),
    ({"conversations": [{"from": "human", "value": "<image>"}]}, "missing_id", "'id'"),
    ({"id": "x", "image": "a.jpg"}, "missing_conversations", "'conversations'"),
    ({"id": "x", "image": "a.jpg", "conversations": [{"from": "gpt", "value": "<image>a"}]},
     "roles_not_alternating", "conversations[0].from"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]},
     "roles_not_alternating", "conversations[1].from"),
    ({"id": "x", "conversations": [{"from": "user", "value": "q"}]}, "bad_role", "'user'"),
    (rec("q", ""), "empty_value", "conversations[1].value"),
    (rec("q", None), "empty_value", "conversations[1].value"),
    (rec("<image> q", "a", image=None), "image_token_without_image", "no 'image' field"),
    (rec("q", "a", image="a.jpg"), "image_without_image_token", "'image' is set"),
    (rec("<image> q <image>", "a"), "multiple_image_tokens", "2 <image>"),
    (rec("<image> q", "a <image>"), "image_token_in_assistant_turn", "conversations[1].value"),
    (rec("q"), "roles_not_alternating", "last turn"),
    ({"id": True, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "invalid_id", "got True"),
    ({"id": 1.5, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "invalid_id", "got 1.5"),
    ({**rec("<image> q", "a"), "image": ["a.jpg", "b.jpg"]}, "multiple_images", "lists 2 images"),
])
def test_bad_records_name_reason_and_field(record, reason, fragment):
    with pytest.raises(RecordError) as e:
        parse_record(record, source="data.json", index=7)
    assert e.value.reason == reason
    assert "data.json record 7" in str(e.value)
    assert fragment in str(e.value)


def test_plain_template_rejects_multi_turn():
    s = normalize_image_token(parse_record(rec("<image> q", "a", "q2", "a2")))
    with pytest.raises(RecordError) as e:
        render_segments(s, "plain")
    assert e.value.reason == "plain_template_shape"
