"""The transformers-free tokenizer that prepare actors use must encode exactly like transformers."""

import json

import pytest

from components.core.tokenize import tokenize_samples
from components.prepare.json_tokenizer import load_json_tokenizer

TEXTS = [
    "",
    " ",
    "What colour is the circle?",
    "  two leading spaces and\ttabs\tand trailing  ",
    "line one\nline two\n\n",
    "<image>\nWhat is in the picture?",
    "before <image> after",
    "<image>",
    "ends with </s>USER: next turn</s>",
    "digits 12345 and 3.14, punctuation!?;:",
    "unicode: café naïve 東京 🙂 — “quotes”",
    "<pad><unk><s></s>",
]


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(path)
    return path


def test_same_ids_as_transformers(tokenizer, saved):
    tok = load_json_tokenizer(str(saved))
    assert tok is not None
    for special in (False, True):
        assert tok(TEXTS, add_special_tokens=special)["input_ids"] == \
            tokenizer(TEXTS, add_special_tokens=special)["input_ids"]
    assert (tok.bos_token_id, tok.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    for token in ("<image>", "<pad>", "<s>", "</s>", "<unk>", "not-a-token"):
        assert tok.convert_tokens_to_ids(token) == tokenizer.convert_tokens_to_ids(token)


def test_same_pipeline_as_transformers(tokenizer, saved):
    tok = load_json_tokenizer(str(saved))
    assert json.loads(tok.backend.to_str()) == json.loads(tokenizer.backend_tokenizer.to_str())


def test_same_training_rows(tokenizer, saved):
    from components.core.conversation import normalize_image_token, parse_record

    record = {"id": "r", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A red circle."},
        {"from": "human", "value": "And  the  colour?"}, {"from": "gpt", "value": "Red, 100%."}]}
    sample = normalize_image_token(parse_record(record, source="t.json", index=0))
    ours = tokenize_samples([sample], load_json_tokenizer(str(saved)), template="vicuna_v1")
    theirs = tokenize_samples([sample], tokenizer, template="vicuna_v1")
    assert ours == theirs


def test_falls_back_when_it_cannot_match(saved, tmp_path):
    assert load_json_tokenizer(str(tmp_path)) is None  # empty folder
    assert load_json_tokenizer("s3://bucket/tok") is None
    for key, value in (("backend", "sentencepiece"), ("pad_token", None)):
        folder = tmp_path / key
        folder.mkdir()
        (folder / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
        config = json.loads((saved / "tokenizer_config.json").read_text())
        config[key] = value
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        assert load_json_tokenizer(str(folder)) is None
    # A tokenizer without the <image> token: transformers' loader would add it, so this one must not serve.
    folder = tmp_path / "no_image"
    folder.mkdir()
    data = json.loads((saved / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    (folder / "tokenizer_config.json").write_text((saved / "tokenizer_config.json").read_text())
    assert load_json_tokenizer(str(folder)) is None
