"""Batched greedy generation on a tiny random-init LLaVA: parity with batch 1, left padding, EOS, images."""

from __future__ import annotations

import io
from random import Random

import pytest
import torch
from PIL import Image

from components.core.tokenize import tokenize_prompt
from components.evaluate.generate import (
    GenerationError,
    Generator,
    GenItem,
    compare_answers,
    parity_differences,
)
from components.models.assembly import build_model, model_image_settings
from components.models.spec import LLMConfig, ModelConfig, RandomLLM, RandomVision, VisionConfig
from components.models.tokenizer import image_token_id

WORDS = "what colour is the shape left right top bottom how many red green blue circle square".split()
CFG = ModelConfig(
    vision=VisionConfig(random_init=RandomVision(image_size=56, patch_size=14, hidden_size=32, num_layers=2,
                                                 num_heads=2, intermediate_size=64)),
    llm=LLMConfig(random_init=RandomLLM(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                                        max_position_embeddings=1024)),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads spinning against each other make
    these tiny matmuls many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generator(tokenizer) -> Generator:
    return Generator(build_model(CFG, tokenizer, seed=3), tokenizer, max_new_tokens=12)


def _image(rng: Random) -> Image.Image:
    return Image.new("RGB", (rng.randint(20, 120), rng.randint(20, 120)),
                     tuple(rng.randint(0, 255) for _ in range(3)))


def _items(n: int, seed: int = 0, text_every: int = 3) -> list[GenItem]:
    rng = Random(seed)
    return [
        GenItem(f"q{i}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) + "?",
                None if i % text_every == 0 else _image(rng))
        for i in range(n)
    ]


def test_batched_answers_equal_batch_one_answers(generator):
    items = _items(14)
    assert parity_differences(generator, items, batch_size=5) == []
    answers = generator.answer(items, batch_size=5)
    assert len(answers) == 14 and all(isinstance(a, str) for a in answers)
    assert len(set(answers)) > 1  # a random model, but not a constant one: the comparison means something


def test_answer_does_not_depend_on_batch_neighbours(generator):
    rng = Random(1)
    target = GenItem("t", "what colour is the shape?", _image(rng))
    long_q = GenItem("long", " ".join(["left right top bottom"] * 30), _image(rng))
    short_q = GenItem("short", "how?", _image(rng))
    alone = generator.generate_batch([target])[0]
    assert generator.generate_batch([long_q, target])[0 + 1] == alone  # target padded by many tokens
    assert generator.generate_batch([target, short_q])[0] == alone  # target is the longest row
    assert generator.generate_batch([short_q, long_q, target, short_q])[2] == alone


def test_prompts_are_left_padded_with_the_training_template(generator, tokenizer):
    ids = [generator.prompt_ids("what colour?", True), generator.prompt_ids("what colour is the shape?", True)]
    assert ids[0] == tokenize_prompt("what colour?", tokenizer, template="vicuna_v1", num_image_tokens=16,
                                     has_image=True)
    assert ids[0].count(image_token_id(tokenizer)) == 16 == generator.num_image_tokens
    input_ids, mask = generator._left_pad(ids)
    short = len(ids[0])
    width = input_ids.shape[1]
    assert width == len(ids[1]) > short
    assert input_ids[0, : width - short].eq(tokenizer.pad_token_id).all()
    assert input_ids[0, width - short :].tolist() == ids[0]  # the prompt ends in the last column
    assert mask[0].tolist() == [0] * (width - short) + [1] * short and mask[1].all()


def test_model_image_settings_follow_the_config(tokenizer):
    model = build_model(CFG.model_copy(update={"vision": CFG.vision.model_copy(
        update={"image_size": 28, "feature_select": "cls_patch"})}), tokenizer)
    assert model_image_settings(model) == (28, 5)  # (28/14)² + CLS


def test_mixed_batches_are_refused_and_answer_groups_them(generator):
    items = _items(6, seed=2, text_every=2)
    with pytest.raises(ValueError, match="mixes image and text-only"):
        generator.generate_batch(items)
    grouped = generator.answer(items, batch_size=6)
    assert grouped == [generator.generate_batch([it])[0] for it in items]


def test_generation_stops_at_eos(tokenizer):
    model = build_model(CFG, tokenizer, seed=3)
    gen = Generator(model, tokenizer, max_new_tokens=20)
    calls = []

    def eos_on_third_step(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:
            output = output.clone()
            output[..., tokenizer.eos_token_id] = 1e4
        return output

    handle = model.lm_head.register_forward_hook(eos_on_third_step)
    try:
        (text,) = gen.generate_batch([GenItem("a", "what colour?", Image.new("RGB", (30, 40)))])
    finally:
        handle.remove()
    assert len(calls) == 3  # two answer tokens, then EOS; not max_new_tokens steps
    assert "</s>" not in text and text == text.strip()


def test_max_new_tokens_bounds_the_decoding_steps(generator):
    calls = []
    handle = generator.model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        generator.generate_batch([GenItem("a", "describe the image", Image.new("RGB", (30, 40)))],
                                 max_new_tokens=5)
    finally:
        handle.remove()
    assert len(calls) == 5  # the random model never says EOS here, so the limit is what stops it


def test_images_from_bytes_and_paths_give_the_same_answer(generator, tmp_path):
    img = Image.new("RGB", (48, 30), (10, 200, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(buf.getvalue())
    gen = Generator(generator.model, generator.tokenizer, max_new_tokens=6, image_root=tmp_path)
    answers = {
        ref_name: gen.generate_batch([GenItem("a", "what colour?", ref)])[0]
        for ref_name, ref in (("pil", img), ("bytes", buf.getvalue()), ("path", "images/x.png"),
                              ("abs", str(tmp_path / "images" / "x.png")))
    }
    assert len(set(answers.values())) == 1, answers


def test_blank_images_replace_every_image_without_reading_it(generator):
    blank = Generator(generator.model, generator.tokenizer, max_new_tokens=6, blank_images=True)
    rng = Random(5)
    items = [GenItem(f"b{i}", "what colour is the shape?", _image(rng)) for i in range(3)]
    answers = blank.answer(items, batch_size=3)
    assert len(set(answers)) == 1  # same prompt, same (blank) image: same answer whatever was given
    assert blank.generate_batch([GenItem("gone", "what colour is the shape?", "no/such/file.png")]) == answers[:1]
    seen = generator.answer(items, batch_size=3)
    assert seen != answers  # the real images do reach the model


def test_unreadable_images_name_the_question(generator, tmp_path):
    gen = Generator(generator.model, generator.tokenizer, image_root=tmp_path)
    with pytest.raises(GenerationError, match="question q7: .*missing.png"):
        gen.generate_batch([GenItem("q7", "what?", "missing.png")])
    with pytest.raises(GenerationError, match="question q8"):
        gen.generate_batch([GenItem("q8", "what?", b"not an image")])


def test_compare_answers_lists_differences_and_missing():
    assert compare_answers({"a": "x", "b": "y"}, {"a": "x", "b": "y"}) == []
    diffs = compare_answers({"a": "x", "b": "y"}, {"a": "x", "b": "z", "c": "w"})
    assert diffs == [{"key": "b", "reference": "y", "candidate": "z"},
                     {"key": "c", "reference": None, "candidate": "w"}]
