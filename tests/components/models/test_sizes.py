"""components/models/sizes.py: exact parameter counts from the configs on the meta device, checked against the
architectures' closed-form counts (written out here from the configs' fields, not through transformers)."""

from __future__ import annotations

import pytest

from components.models.arch import ArchNotFound, arch
from components.models.sizes import model_sizes, tokenizer_size
from pipelines.config import load_config


def llama_params(vocab: int, hidden: int, inter: int, layers: int) -> int:
    """Embeddings + lm_head (untied) + per layer q/k/v/o (no bias), SwiGLU gate/up/down, two RMSNorms + final norm."""
    return 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + hidden


def clip_vision_params(hidden: int, inter: int, layers: int, image: int, patch: int) -> int:
    """CLIPVisionModel: class embedding, patch conv (no bias), positions, pre/post LayerNorm, and per layer
    q/k/v/out with biases, two LayerNorms, the MLP's two biased linears."""
    positions = (image // patch) ** 2 + 1
    embeddings = hidden + 3 * patch * patch * hidden + positions * hidden
    layer = 4 * (hidden * hidden + hidden) + 4 * hidden + (hidden * inter + inter) + (inter * hidden + hidden)
    return embeddings + 2 * 2 * hidden + layers * layer


def test_closed_forms_match_the_published_counts():
    # Vicuna-7B-v1.5 / Llama-2-7B: 6,738,415,616 parameters; 13B: 13,015,864,320 (the checkpoints' index sizes / 2).
    assert llama_params(32000, 4096, 11008, 32) == 6_738_415_616
    assert llama_params(32000, 5120, 13824, 40) == 13_015_864_320
    assert clip_vision_params(1024, 4096, 24, 336, 14) == 303_507_456


@pytest.mark.parametrize(("config", "hidden", "inter", "layers"),
                         [("llava15_7b", 4096, 11008, 32), ("llava15_13b", 5120, 13824, 40)])
def test_paper_models_are_counted_exactly(config, hidden, inter, layers):
    cfg = load_config(config)
    sizes = model_sizes(cfg.model.spec(), cfg.model.tokenizer)
    # Vicuna's tokenizer has a pad token (<unk>): add_llava_tokens adds only <image>, one row more.
    assert sizes.vocab == tokenizer_size(cfg.model.tokenizer) == 32001
    assert sizes.llm == llama_params(32001, hidden, inter, layers)
    assert sizes.vision == clip_vision_params(1024, 4096, 24, 336, 14)
    assert sizes.connector == (1024 * hidden + hidden) + (hidden * hidden + hidden)  # mlp2x_gelu
    assert (sizes.hidden, sizes.intermediate, sizes.layers) == (hidden, inter, layers)
    assert sizes.image_tokens == 576 and sizes.vision_positions == 577
    # Downloads: the whole CLIP checkpoint in fp32 (both towers) and the LLM's fp16 checkpoint.
    assert sizes.download_bytes > 4 * sizes.vision + 2 * llama_params(32000, hidden, inter, layers)


def test_shipped_arch_configs_name_their_source():
    for name in ("lmsys/vicuna-7b-v1.5", "lmsys/vicuna-13b-v1.5", "openai/clip-vit-large-patch14-336",
                 "openai/clip-vit-large-patch14"):
        a = arch(name, "model.llm.name_or_path")
        assert a.source.startswith(("https://", "HF cache: ")), a.source
        assert not any(k.startswith("_") for k in a.config)


def test_unknown_checkpoint_names_the_key_and_the_fixes():
    with pytest.raises(ArchNotFound, match=r"model.llm.name_or_path='nobody/no-such-model'.*hf download"):
        arch("nobody/no-such-model", "model.llm.name_or_path")


def test_a_local_folder_without_config_is_named(tmp_path):
    with pytest.raises(ArchNotFound, match="has no config.json"):
        arch(str(tmp_path), "model.vision.name_or_path")
