"""Every saved model folder (finetune output, export) ships a processor that shapes a non-square image
exactly as training does. (The pretrain output is a connector file, with no model folder or processor.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from components.core.images import normalize
from components.export.chat_template import chat_template
from components.export.package import write_model_dir
from components.models.assembly import build_model
from components.models.processor import build_processor
from components.train.outputs import write_finetune_output
from components.train.pixels import load_pixels
from pipelines.config import load_config


def noise_png(path: Path, w: int, h: int) -> Path:
    """Content up to every edge, so a centre crop and a pad give different pixels."""
    rng = np.random.default_rng(w * 1000 + h)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def processor_pixels(folder: Path, image: Path) -> np.ndarray:
    """pixel_values of the folder's processor, loaded as a user would (PIL backend, as the export card says)."""
    processor = AutoProcessor.from_pretrained(str(folder), backend="pil")
    with Image.open(image) as img:
        return processor.image_processor(img, return_tensors="np")["pixel_values"][0]


def training_pixels(image: Path, mode: str, size: int) -> np.ndarray:
    """The training path: prepare's pixel map (uint8), normalised as collate does on the worker."""
    return normalize(load_pixels(str(image), mode, size))


@pytest.mark.parametrize("mode", ["pad", "square"])
@pytest.mark.parametrize(("w", "h"), [(90, 60), (50, 100)])
def test_saved_processor_matches_the_training_pixels(tokenizer, tiny_config, tmp_path, mode, w, h):
    model = build_model(tiny_config(), tokenizer)
    build_processor(model, tokenizer, mode).save_pretrained(str(tmp_path / "model"))
    image = noise_png(tmp_path / "img.png", w, h)
    ours = training_pixels(image, mode, 56)
    assert np.array_equal(processor_pixels(tmp_path / "model", image), ours)
    other = training_pixels(image, "square" if mode == "pad" else "pad", 56)
    assert not np.array_equal(ours, other)  # the image tells the two modes apart


def test_image_token_count_mismatch_is_an_error(tokenizer, tiny_config):
    model = build_model(tiny_config(), tokenizer)
    model.config.image_seq_length = 5
    with pytest.raises(ValueError, match="expand <image> to 16 tokens, the model takes 16"):
        build_processor(model, tokenizer, "pad")


@pytest.mark.parametrize("folder", ["finetune", "export"])
def test_each_saved_model_folder_ships_the_training_processor(tokenizer, tmp_path, folder):
    stage = load_config("tiny").finetune
    assert stage.image_mode == "pad"
    model = build_model(load_config("tiny").model, tokenizer)
    if folder == "finetune":
        write_finetune_output(model, stage, tokenizer, str(tmp_path / "out"), rank=0)
        saved = tmp_path / "out" / "model"
    else:
        write_model_dir(model, tokenizer, tmp_path / "export", chat_template=chat_template(stage.template),
                        card="test")
        saved = tmp_path / "export"
    size = model.config.vision_config.image_size
    for w, h in [(90, 60), (50, 100)]:
        image = noise_png(tmp_path / f"{w}x{h}.png", w, h)
        assert np.array_equal(processor_pixels(saved, image), training_pixels(image, stage.image_mode, size))
