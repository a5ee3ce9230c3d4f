import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.core.conversation import IMAGE_TOKEN, RecordError, normalize_image_token, parse_record
from components.core.templates import render_segments, render_text
from components.core.tokenize import (
    IGNORE_INDEX,
    expand_image_tokens,
    supervised_spans,
    tokenize_prompt,
    tokenize_sample,
    tokenize_samples,
)

N_IMG = 16


def sample_of(values, image="a.jpg"):
    convs = [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]
    rec = {"id": "s", "conversations": convs, **({"image": image} if image else {})}
    return normalize_image_token(parse_record(rec))


def test_bos_once_image_expanded_and_masked(tokenizer):
    s = sample_of(["<image>\nWhat colour?", "Red."])
    out = tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=N_IMG, max_length=512)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert out.input_ids.count(tokenizer.bos_token_id) == 1 and out.input_ids[0] == tokenizer.bos_token_id
    positions = [i for i, t in enumerate(out.input_ids) if t == image_id]
    assert len(positions) == N_IMG and positions == list(range(positions[0], positions[0] + N_IMG))
    assert all(out.labels[i] == IGNORE_INDEX for i in positions)
    assert out.labels[0] == IGNORE_INDEX


def test_plain_supervises_caption_and_newline_only(tokenizer):
    s = sample_of(["Describe the image. <image>", "a red circle left"])
    out = tokenize_sample(s, tokenizer, template="plain", num_image_tokens=N_IMG, max_length=512)
    assert out.prompt == "<image>a red circle left\n"
    spans = supervised_spans(out.labels)
    assert len(spans) == 1
    assert tokenizer.decode(spans[0]) == "a red circle left\n"
    assert tokenizer.eos_token_id not in out.input_ids  # no EOS in pretraining, as the reference
    assert out.num_supervised == len(out.input_ids) - 1 - N_IMG  # everything but BOS and the image


def test_segments_equal_whole_string_tokenization(tokenizer):
    s = sample_of(["What colour is it?\n<image>", "Red.", "And the shape?", "A circle, top left."])
    (compact,) = tokenize_samples([s], tokenizer, template="vicuna_v1")
    text = render_text(render_segments(s, "vicuna_v1"))
    assert compact.input_ids == tokenizer(text)["input_ids"]


def test_prompt_equals_whole_string_tokenization(tokenizer):
    q = "What colour is the shape?\nAnswer the question using a single word or phrase."
    ids = tokenize_prompt(q, tokenizer, template="vicuna_v1", num_image_tokens=1, has_image=True)
    from components.core.templates import VICUNA_SYSTEM

    assert ids == tokenizer(f"{VICUNA_SYSTEM} USER: <image>\n{q} ASSISTANT:")["input_ids"]


TEXT = st.text(alphabet=string.ascii_letters + string.digits + " .,?!'-\n", min_size=1, max_size=40).filter(
    lambda t: t.strip() != "")


@st.composite
def conversations(draw):
    rounds = draw(st.integers(1, 4))
    has_image = draw(st.booleans())
    values = []
    for _ in range(rounds):
        values += [draw(TEXT), draw(TEXT)]
    if has_image:
        values[0] = values[0] + " " + IMAGE_TOKEN if draw(st.booleans()) else IMAGE_TOKEN + values[0]
    return values, has_image


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversations())
def test_only_answers_and_eos_supervised(tokenizer, conv):
    values, has_image = conv
    s = sample_of(values, image="a.jpg" if has_image else None)
    out = tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=N_IMG, max_length=100_000)
    spans = supervised_spans(out.labels)
    answers = [t.value for t in s.turns if t.role == "gpt"]
    assert len(spans) == len(answers)
    for span, answer in zip(spans, answers, strict=True):
        assert span[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(span[:-1]).strip() == answer.strip()
    # labels are either ignored or equal the input id at that position
    assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(out.labels, out.input_ids, strict=True))
    assert (N_IMG if has_image else 0) == out.num_image_tokens


def test_truncation_at_the_boundary(tokenizer):
    s = sample_of(["<image>\nWhat colour?", "Red red red red red red red red red red."])
    full = tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=N_IMG, max_length=10_000)
    exact = tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=N_IMG, max_length=full.length)
    assert not exact.truncated and exact.input_ids == full.input_ids
    cut = tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=N_IMG, max_length=full.length - 1)
    assert cut.truncated and cut.input_ids == full.input_ids[:-1] and cut.labels == full.labels[:-1]


def test_truncation_never_cuts_image_tokens(tokenizer):
    s = sample_of(["<image>\nWhat colour?", "Red."])
    with pytest.raises(RecordError) as e:
        tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=N_IMG, max_length=N_IMG)
    assert e.value.reason == "over_length" and "image tokens" in str(e.value)


def test_truncation_leaving_no_answer_is_rejected(tokenizer):
    s = sample_of(["<image>\n" + "what colour is the shape " * 10, "Red."])
    full = tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=N_IMG, max_length=10_000)
    with pytest.raises(RecordError) as e:
        tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=N_IMG,
                        max_length=full.length - full.num_supervised)
    assert e.value.reason == "no_supervised_tokens"


def test_expand_is_resolution_independent(tokenizer):
    s = sample_of(["<image>\nWhat colour?", "Red."])
    (compact,) = tokenize_samples([s], tokenizer, template="vicuna_v1")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for n in (1, 16, 36):
        ids, labels, truncated = expand_image_tokens(compact.input_ids, compact.labels, image_id=image_id,
                                                     num_image_tokens=n, max_length=4096)
        direct = tokenize_sample(s, tokenizer, template="vicuna_v1", num_image_tokens=n, max_length=4096)
        assert ids == direct.input_ids and labels == direct.labels and not truncated


@pytest.mark.parametrize("text", ["Red.</s> Then more.", "a <s> b", "<unk>", "<pad>"])
def test_special_token_text_is_rejected_at_train_and_eval_time(tokenizer, tmp_path, text):
    """A literal `</s>` would be tokenized as EOS (and supervised mid-answer): both tokenizer backends refuse it,
    in training conversations and in evaluation questions alike."""
    from components.prepare.json_tokenizer import load_json_tokenizer

    tokenizer.save_pretrained(tmp_path)
    for tok in (tokenizer, load_json_tokenizer(str(tmp_path))):
        (out,) = tokenize_samples([sample_of(["<image>\nWhat?", text])], tok, template="vicuna_v1")
        assert isinstance(out, RecordError) and out.reason == "special_token_text"
        assert "conversations[1].value" in str(out)
        with pytest.raises(RecordError, match="special token"):
            tokenize_prompt(text, tok, template="vicuna_v1", num_image_tokens=N_IMG, has_image=True)
    (ok,) = tokenize_samples([sample_of(["<image>\nWhat?", "s / ok"])], tokenizer, template="vicuna_v1")
    assert not isinstance(ok, RecordError)
