import json

import fsspec
import pytest
from transformers import AutoTokenizer, LlamaTokenizer

from components.models.tokenizer import (
    IMAGE_TOKEN,
    PAD_TOKEN,
    SPM_FILE,
    add_llava_tokens,
    image_token_id,
    load_tokenizer,
    train_tokenizer,
)

CORPUS = [
    "What colour is the shape?\nThe shape is red.",
    "There are 3 circles and 12 squares in the image.",
    "Describe the picture. A blue triangle on a grey background.",
] * 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(CORPUS, 300, out), out


def test_saved_tokenizer_reloads_identically(trained):
    tok, out = trained
    assert (out / "tokenizer.model").is_file()  # the SentencePiece model is kept alongside
    again = AutoTokenizer.from_pretrained(out)
    assert isinstance(again, LlamaTokenizer)
    assert again.get_vocab() == tok.get_vocab()
    assert len(again) == len(tok) == 302  # 300 pieces + <image> + <pad>
    text = f"{IMAGE_TOKEN}\nWhat colour is the shape? 12 circles"
    assert again(text).input_ids == tok(text).input_ids
    assert again.padding_side == tok.padding_side == "right"
    assert again.pad_token == PAD_TOKEN and image_token_id(again) == image_token_id(tok)


def test_llama_special_ids_and_exactly_one_bos(trained):
    tok, _ = trained
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("the shape is red").input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.eos_token_id not in ids
    assert tok("the shape is red", add_special_tokens=False).input_ids == ids[1:]


def test_llava_tokens(trained):
    tok, _ = trained
    img = image_token_id(tok)
    assert (img, tok.pad_token_id) == (300, 301)  # appended after the base vocabulary, as in llava-hf
    ids = tok(f"{IMAGE_TOKEN}\nwhat", add_special_tokens=False).input_ids
    assert ids[0] == img and ids.count(img) == 1  # one token, never split into pieces
    assert tok.convert_ids_to_tokens(tok.pad_token_id) == PAD_TOKEN


@pytest.mark.parametrize("text", ["The shape is red.", "3 circles and 12 squares", "zebra QUIZ ünïcödé 😀"])
def test_encode_decode_round_trips(trained, text):
    # Characters never seen in training come back through byte fallback, not <unk>.
    tok, _ = trained
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_newlines_use_byte_fallback_like_llama(trained):
    tok, _ = trained
    pieces = tok.convert_ids_to_tokens(tok("red\nblue", add_special_tokens=False).input_ids)
    assert "<0x0A>" in pieces


def test_training_is_deterministic(tmp_path):
    train_tokenizer(CORPUS, 300, tmp_path / "a")
    train_tokenizer(CORPUS, 300, tmp_path / "b")
    for name in ("tokenizer.model", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_vocab_size_and_empty_corpus_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=100000.*SentencePiece"):
        train_tokenizer(CORPUS, 100_000, tmp_path / "big")
    with pytest.raises(ValueError, match="corpus is empty"):
        train_tokenizer(["", "  \n "], 300, tmp_path / "empty")


def _bare(trained, tmp_path) -> LlamaTokenizer:
    """The SentencePiece model alone, loaded as transformers does for a Vicuna repo: no LLaVA tokens."""
    (tmp_path / SPM_FILE).write_bytes((trained[1] / SPM_FILE).read_bytes())
    return LlamaTokenizer.from_pretrained(tmp_path)


def test_add_llava_tokens_is_idempotent_and_keeps_an_existing_pad(trained, tmp_path):
    tok, _ = trained
    n = len(tok)
    assert len(add_llava_tokens(tok)) == n
    base = _bare(trained, tmp_path)
    assert len(base) == 300 and base.pad_token is None
    base.pad_token = base.unk_token  # like lmsys/vicuna-7b-v1.5, whose pad is <unk>
    add_llava_tokens(base)
    assert base.pad_token == base.unk_token and image_token_id(base) == 300 and len(base) == 301


def test_image_token_id_needs_the_llava_tokens(trained, tmp_path):
    plain = _bare(trained, tmp_path)
    with pytest.raises(ValueError, match="add_llava_tokens"):
        image_token_id(plain)


def test_load_tokenizer_from_a_local_folder(trained):
    tok, out = trained
    loaded = load_tokenizer(str(out))
    assert loaded.get_vocab() == tok.get_vocab() and loaded.padding_side == "right"


def test_load_tokenizer_from_a_remote_folder(trained, tmp_path, monkeypatch):
    # fsspec's in-memory filesystem stands in for s3://: the same copy-to-local-cache path runs.
    monkeypatch.setenv("LLAVA_PIPELINE_CACHE", str(tmp_path / "cache"))
    tok, out = trained
    fs = fsspec.filesystem("memory")
    for f in out.iterdir():
        fs.pipe(f"/bucket/tok/{f.name}", f.read_bytes())
    loaded = load_tokenizer("memory://bucket/tok")
    assert loaded.get_vocab() == tok.get_vocab()
    assert list((tmp_path / "cache" / "remote").iterdir())  # served from the local copy


def test_load_tokenizer_names_the_field_on_failure(tmp_path):
    with pytest.raises(ValueError, match="model.tokenizer.name_or_path"):
        load_tokenizer(str(tmp_path / "no-such-tokenizer"))


def test_load_tokenizer_from_a_vicuna_style_repo(trained, tmp_path):
    # lmsys/vicuna-7b-v1.5 ships tokenizer.model + tokenizer_config.json (no tokenizer.json), pad = <unk>.
    (tmp_path / SPM_FILE).write_bytes((trained[1] / SPM_FILE).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "legacy": False, "model_max_length": 4096,
        "pad_token": None, "padding_side": "right", "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    }))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<unk>"}))
    tok = load_tokenizer(str(tmp_path))
    ids = tok("the shape is red").input_ids
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == 1
    assert tok.pad_token == "<unk>" and image_token_id(tok) == 300 and len(tok) == 301
