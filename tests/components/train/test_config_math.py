"""DeepSpeed config filling, step count, and the FLOP/MFU arithmetic."""

import json

import pytest

from components.train.flops import FlopCounts, mfu, peak_flops
from components.train.recipe import total_steps
from components.train.zero import deepspeed_config
from pipelines.config import load_config


def test_deepspeed_auto_fields_come_from_the_stage():
    cfg = load_config("tiny", ["finetune.precision=bf16", "finetune.optim.max_grad_norm=1.0",
                               "finetune.deepspeed=deepspeed/zero3.json", "finetune.num_workers=2",
                               "finetune.global_batch=32"])
    ds = deepspeed_config(cfg.finetune, world=2, hidden_size=128)
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["train_batch_size"] == 32
    assert ds["bf16"]["enabled"] is True
    assert ds["gradient_clipping"] == 1.0
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["reduce_bucket_size"] == 128 * 128
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 128 * 128)
    assert zero["stage3_param_persistence_threshold"] == 1280
    assert "auto" not in json.dumps(ds)
    pre = deepspeed_config(load_config("tiny").pretrain, world=1, hidden_size=64)
    assert pre["gradient_accumulation_steps"] == 2 and pre["bf16"]["enabled"] is False
    assert pre["gradient_clipping"] == 1.0  # the default max_grad_norm
    off = load_config("tiny", ["pretrain.optim.max_grad_norm=0"]).pretrain
    # Written even when off: DeepSpeed >= 0.19.3 clips at 1.0 when the key is absent.
    assert deepspeed_config(off, world=1, hidden_size=64)["gradient_clipping"] == 0.0


def test_deepspeed_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_batch_size": "auto", "zero_optimization": {"mystery": "auto"}}))
    stage = load_config("tiny", [f"pretrain.deepspeed={bad}"]).pretrain
    with pytest.raises(ValueError, match=r"ds.json: zero_optimization.mystery is \"auto\""):
        deepspeed_config(stage, world=2, hidden_size=8)
    bad.write_text(json.dumps({"gradient_clipping": 1.0}))
    with pytest.raises(ValueError, match="ds.json: remove gradient_clipping; the stage's optim.max_grad_norm"):
        deepspeed_config(stage, world=2, hidden_size=8)
    bad.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(ValueError, match="remove the optimizer"):
        deepspeed_config(stage, world=2, hidden_size=8)
    stage = stage.model_copy(update={"deepspeed": str(tmp_path / "missing.json")})  # past load_config's check
    with pytest.raises(ValueError, match="deepspeed: DeepSpeed config .*missing.json' not found"):
        deepspeed_config(stage, world=2, hidden_size=8)


def test_total_steps():
    assert total_steps(1500, 32, 1.0, None) == 47  # ceil(1500 / 32)
    assert total_steps(2500, 32, 3.0, None) == 235
    assert total_steps(2500, 32, 3.0, 10) == 10
    assert total_steps(10, 32, 0.1, None) == 1


def test_flops_and_mfu():
    # pretrain: connector trained, LLM frozen but back-propagated through, tower forward only
    counts = FlopCounts(vision=300, connector_trained=20, connector_frozen=0, llm_trained=0, llm_frozen=7000,
                        vision_tokens_per_image=577)
    flops = counts.step_flops(llm_tokens=1000, image_tokens=576, images=1)
    assert flops == 4 * 7000 * 1000 + 6 * 20 * 576 + 2 * 300 * 577
    full = FlopCounts(vision=300, connector_trained=20, connector_frozen=0, llm_trained=7000, llm_frozen=0,
                      vision_tokens_per_image=577)
    assert full.step_flops(1000, 0, 0) == 6 * 7000 * 1000
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32") is None
    assert peak_flops("Some CPU", "bf16") is None
    assert mfu(989e12, 1.0, 2, 989e12) == pytest.approx(0.5)
    assert mfu(1.0, 1.0, 1, None) is None


def test_packing_is_on_by_default_on_gpu_and_off_on_cpu():
    paper = load_config("llava15_7b")
    assert paper.pretrain.packed and paper.finetune.packed  # use_gpu: auto → on
    tiny = load_config("tiny")
    assert not tiny.pretrain.packed and not tiny.finetune.packed  # CPU default keeps the padded layout
    assert load_config("tiny", ["finetune.packing=on"]).finetune.packed
    assert not load_config("llava15_7b", ["finetune.packing=off"]).finetune.packed
