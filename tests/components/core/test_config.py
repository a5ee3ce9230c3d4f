import pytest

from components.core.config import ConfigError, load_raw, validate
from components.core.paths import CONFIG_DIR
from components.train.spec import deepspeed_config_path
from pipelines.config import PipelineConfig, load_config

# The reference recipe (haotian-liu/LLaVA scripts/v1_5/*.sh, llava15.md §1.2), field by field.
PRETRAIN = {
    "template": "plain", "image_mode": "square", "trainable": "connector", "global_batch": 256,
    "epochs": 1.0, "max_length": 2048, "precision": "bf16", "gradient_checkpointing": True,
    "group_by_modality_length": False, "deepspeed": "deepspeed/zero2.json",
}
FINETUNE = {
    "template": "vicuna_v1", "image_mode": "pad", "trainable": "connector+llm", "global_batch": 128,
    "epochs": 1.0, "max_length": 2048, "precision": "bf16", "gradient_checkpointing": True,
    "group_by_modality_length": True, "deepspeed": "deepspeed/zero3.json",
}


@pytest.mark.parametrize(("name", "llm"), [
    ("llava15_7b", "lmsys/vicuna-7b-v1.5"),
    ("llava15_13b", "lmsys/vicuna-13b-v1.5"),
    ("llava15_7b_lora", "lmsys/vicuna-7b-v1.5"),
])
def test_paper_recipes_equal_the_reference(name, llm):
    cfg = load_config(name)
    assert cfg.model.vision.name_or_path == "openai/clip-vit-large-patch14-336"
    assert cfg.model.vision.feature_layer == -2
    assert cfg.model.vision.feature_select == "patch"
    assert cfg.model.connector == "mlp2x_gelu"
    assert cfg.model.llm.name_or_path == llm
    for stage, expected in ((cfg.pretrain, PRETRAIN), (cfg.finetune, FINETUNE)):
        for key, value in expected.items():
            if key == "deepspeed":  # the packaged file, kept as its name: found in each node's own copy
                assert deepspeed_config_path(stage) == (CONFIG_DIR / value).resolve()
            assert getattr(stage, key) == value, (name, key)
        assert stage.schedule.kind == "cosine"
        assert stage.schedule.warmup_ratio == 0.03
        assert stage.optim.weight_decay == 0.0
        assert stage.optim.betas == (0.9, 0.999) and stage.optim.eps == 1e-8  # HF adamw_torch defaults
        assert stage.optim.max_grad_norm == 1.0  # written out in llava15_7b.yaml (see its comment)
        assert stage.per_device_batch * stage.gradient_accumulation * stage.num_workers == stage.global_batch
    assert cfg.pretrain.optim.lr == 1e-3
    if name.endswith("lora"):
        assert cfg.finetune.optim.lr == 2e-4
        assert cfg.finetune.optim.connector_lr == 2e-5
        lora = cfg.finetune.lora
        assert (lora.r, lora.alpha, lora.dropout) == (128, 256, 0.05)
    else:
        assert cfg.finetune.optim.lr == 2e-5
        assert cfg.finetune.lora is None


def test_deepspeed_files_match_the_reference():
    import json

    from components.core.paths import CONFIG_DIR

    z2 = json.loads((CONFIG_DIR / "deepspeed/zero2.json").read_text())
    z3 = json.loads((CONFIG_DIR / "deepspeed/zero3.json").read_text())
    assert z2["zero_optimization"]["stage"] == 2 and z3["zero_optimization"]["stage"] == 3
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "gradient_clipping" not in z2 and "optimizer" not in z2 and "scheduler" not in z3


def test_type_error_names_the_set_or_the_file_and_key_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["finetune.optim.lr=fast"])
    assert str(e.value) == "--set finetune.optim.lr=fast: finetune.optim.lr: expected a number, got 'fast'"
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["nosuch.key=1"])
    assert str(e.value) == "--set nosuch.key=1: nosuch: unknown key"
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny.yaml\nfinetune: {optim: {lr: fast}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad, ["pretrain.max_steps=3"])
    assert str(e.value) == f"{bad}: finetune.optim.lr: expected a number, got 'fast'"


def test_unknown_and_missing_keys(tmp_path):
    raw = load_raw("tiny")
    raw["pretrain"]["learning_rate"] = 1
    del raw["finetune"]["optim"]
    with pytest.raises(ConfigError) as e:
        validate(PipelineConfig, raw, "my.yaml")
    msg = str(e.value)
    assert "my.yaml: pretrain.learning_rate: unknown key" in msg
    assert "my.yaml: finetune.optim: required key is missing" in msg


def test_override_sets_typed_values():
    cfg = load_config("tiny", ["finetune.optim.lr=1e-5", "pretrain.max_steps=3", "finetune.use_gpu=true"])
    assert cfg.finetune.optim.lr == 1e-5
    assert cfg.pretrain.max_steps == 3
    assert cfg.finetune.use_gpu is True


def test_global_batch_must_divide():
    with pytest.raises(ConfigError) as e:
        load_config("llava15_7b", ["finetune.num_workers=3"])
    assert "finetune: global_batch 128 is not a multiple of per_device_batch 16 × num_workers 3" in str(e.value)
    cfg = load_config("llava15_7b", ["finetune.num_workers=2"])
    assert cfg.finetune.gradient_accumulation == 4


def test_exactly_one_model_source():
    with pytest.raises(ConfigError, match="model.vision: set exactly one of name_or_path or random_init"):
        load_config("tiny", ["model.vision.name_or_path=openai/clip-vit-large-patch14-336"])


def test_missing_config_and_bad_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config("tiny", ["finetune.optim.lr"])


def test_validate_reads_any_section_type():
    """The loader is generic: `validate` takes the section's class, and its errors name the keys inside it."""
    from components.train.spec import TrainStageConfig

    raw = load_raw("tiny")
    stage = validate(TrainStageConfig, raw["pretrain"], "tiny.yaml")
    assert isinstance(stage, TrainStageConfig) and stage == load_config("tiny").pretrain
    with pytest.raises(ConfigError) as e:
        validate(TrainStageConfig, {**raw["pretrain"], "global_batch": "many"}, "tiny.yaml")
    assert str(e.value) == "tiny.yaml: global_batch: expected an integer, got 'many'"
