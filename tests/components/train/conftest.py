"""A tiny random-init LLaVA in float64 and prepared rows for it: exact comparisons of training computations.
`world`: a prepared subset of the tiny synthetic world, for the tests that train end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.core.tokenize import IGNORE_INDEX
from components.models.assembly import build_model, num_image_tokens
from components.models.spec import LLMConfig, ModelConfig, RandomLLM, RandomVision, VisionConfig
from components.models.tokenizer import image_token_id
from components.train.collate import CollateSpec

# LLM head dim 16: the smallest flex attention's GPU kernels take.
CFG = ModelConfig(
    vision=VisionConfig(random_init=RandomVision(image_size=28, patch_size=14, hidden_size=32, num_layers=2,
                                                 num_heads=2, intermediate_size=64)),
    llm=LLMConfig(random_init=RandomLLM(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                        max_position_embeddings=256)),
)
LENGTHS = [(9, True), (3, False), (14, True), (6, False)]  # (text tokens, has image)


@pytest.fixture(scope="module")
def tiny_llava(tokenizer):
    """In float64 and training mode (the training path); dropout is 0 in these configs."""
    return build_model(CFG, tokenizer, dtype=torch.float64, seed=1).train()


@pytest.fixture
def build_tiny_llava(tokenizer):
    """build_tiny_llava(dtype, device) -> the same model (same seed) in that dtype on that device."""
    return lambda dtype, device: build_model(CFG, tokenizer, dtype=dtype, seed=1).to(device).train()


@pytest.fixture(scope="module")
def tiny_spec(tokenizer) -> CollateSpec:
    return CollateSpec(image_id=image_token_id(tokenizer), num_image_tokens=num_image_tokens(CFG.vision), max_length=64,
                       pad_id=tokenizer.pad_token_id, image_size=28)


def rows_for(tokenizer, seed: int = 0, text_only: bool = False):
    """Prepared rows (one <image> id, BOS first, a supervised text part) and their uint8 pixels."""
    rng = np.random.default_rng(seed)
    img = image_token_id(tokenizer)
    ids, labels, pixels = [], [], []
    for n_text, has_image in LENGTHS:
        has_image = has_image and not text_only
        text = rng.integers(10, len(tokenizer) - 10, n_text).tolist()
        head = [tokenizer.bos_token_id, *([img] if has_image else [])]
        ids.append(head + text)
        cut = n_text // 3  # the first third is context (instruction), the rest supervised
        labels.append([IGNORE_INDEX] * (len(head) + cut) + text[cut:])
        pixels.append(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8).tobytes() if has_image else None)
    return ids, labels, pixels


@pytest.fixture
def make_rows(tokenizer):
    """make_rows(seed=0, text_only=False) -> (ids, labels, pixels) as the prepare stage stores them."""
    return lambda seed=0, text_only=False: rows_for(tokenizer, seed, text_only)


PRETRAIN_ROWS, FINETUNE_ROWS = 480, 640


@pytest.fixture(scope="session")
def world(tmp_path_factory, ray_local, subset_world):
    """(root, config overrides): a prepared subset of the tiny world (root/"prep"), shared by the session."""
    from components.core.fingerprint import OutputPath
    from components.core.stage_run import StageRun
    from components.prepare.stage import run_prepare
    from pipelines.config import load_config
    from pipelines.llava15 import prepare_args

    root = tmp_path_factory.mktemp("train")
    synth, data = subset_world(root, PRETRAIN_ROWS, FINETUNE_ROWS)
    overrides = [
        *data,
        "pretrain.max_steps=14", "pretrain.optim.lr=5e-3",
        "pretrain.packing=on",  # the padding-free layout through the recipe (finetune keeps the padded one)
        "finetune.max_steps=8", "finetune.checkpoint_every=2",
        # data-parallel ZeRO-3, as the paper's finetune (tiny.yaml itself finetunes on one ZeRO-2 worker)
        "finetune.deepspeed=deepspeed/zero3.json", "finetune.num_workers=2", "finetune.cpus_per_worker=0.5",
        "finetune.global_batch=32", "finetune.threads_per_worker=null",
    ]
    prep = str(root / "prep")
    run_prepare(**prepare_args(load_config("tiny", overrides), {"synth": OutputPath(str(synth), "synth")}),
                run=StageRun(stage="prepare", out=prep, storage=str(root), fingerprint="test"))
    return root, overrides
