import pytest
import torch
from peft import PeftModel
from transformers import LlavaForConditionalGeneration

from components.models.assembly import build_model
from components.models.connectors import connector_of, connector_spec_of
from components.train.spec import LoraConfig, OptimConfig
from components.train.trainable import (
    apply_lora,
    lora_target_modules,
    merge_lora,
    param_groups,
    parameter_counts,
    set_trainable,
)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def model(tokenizer, tiny_config):
    return build_model(tiny_config(), tokenizer)


def test_pretrain_trains_only_the_connector(model):
    model.train()
    counts = set_trainable(model, "connector")
    n_vision, n_conn = _numel(model.model.vision_tower), _numel(connector_of(model))
    assert counts["vision_tower"] == {"trainable": 0, "frozen": n_vision}
    assert counts["connector"] == {"trainable": n_conn, "frozen": 0}
    assert counts["language_model"]["trainable"] == 0
    assert counts["language_model"]["frozen"] == _numel(model) - n_vision - n_conn
    assert not model.model.vision_tower.training


def test_finetune_trains_connector_and_llm(model):
    set_trainable(model, "connector")
    counts = set_trainable(model, "connector+llm")  # also undoes an earlier freeze
    assert counts["vision_tower"]["trainable"] == 0
    assert counts["connector"]["frozen"] == 0 and counts["language_model"]["frozen"] == 0
    assert counts["language_model"]["trainable"] == _numel(model.model.language_model) + model.lm_head.weight.numel()


def test_set_trainable_rejects_unknown_modes(model):
    with pytest.raises(ValueError, match="connector\\+llm"):
        set_trainable(model, "llm")


def _perturb_lora(peft_model: PeftModel) -> None:
    # LoRA's B starts at zero, so a fresh adapter merges to a no-op; give it weights as training would.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_lora_adapts_only_llm_linears_and_trains_the_connector(model):
    targets = lora_target_modules(model)
    assert targets and all(t.startswith("model.language_model.") for t in targets)
    assert {t.rsplit(".", 1)[1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                      "up_proj", "down_proj"}
    wrapped = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(".language_model." in n for n in lora)
    assert not any("lm_head" in n or "vision_tower" in n or "multi_modal_projector.lora" in n
                   for n in lora)
    conn = {n for n in trainable if "multi_modal_projector" in n}
    assert len(conn) == len(list(connector_of(wrapped).parameters()))
    assert trainable == lora | conn
    counts = parameter_counts(wrapped)
    assert counts["vision_tower"]["trainable"] == 0 and counts["connector"]["frozen"] == 0


def test_lora_merge_saves_and_loads_with_plain_transformers(model, tokenizer, make_batch, tmp_path):
    inputs = make_batch(tokenizer, 16)
    with torch.no_grad():
        before = model(**inputs).logits
    wrapped = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.05))
    _perturb_lora(wrapped)
    wrapped.eval()
    with torch.no_grad():
        adapted = wrapped(**inputs).logits
    merged = merge_lora(wrapped)
    assert type(merged) is LlavaForConditionalGeneration
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        in_memory = merged(**inputs).logits
    assert not torch.allclose(in_memory, before)  # the adapters did change the model
    torch.testing.assert_close(in_memory, adapted, rtol=1e-4, atol=1e-4)

    merged.save_pretrained(tmp_path / "merged")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert connector_spec_of(reloaded) == "mlp2x_gelu"
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, in_memory)


def test_merge_lora_needs_a_lora_model(model):
    with pytest.raises(ValueError, match="PeftModel"):
        merge_lora(model)


def test_param_groups_lrs_and_weight_decay(model):
    set_trainable(model, "connector+llm")
    groups = param_groups(model, OptimConfig(lr=2e-4, connector_lr=2e-5, weight_decay=0.1))
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"connector/decay", "connector/no_decay", "llm/decay", "llm/no_decay"}
    assert by_name["connector/decay"]["lr"] == by_name["connector/no_decay"]["lr"] == 2e-5
    assert by_name["llm/decay"]["lr"] == by_name["llm/no_decay"]["lr"] == 2e-4
    assert by_name["llm/decay"]["weight_decay"] == 0.1 and by_name["llm/no_decay"]["weight_decay"] == 0.0

    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["name"].endswith("no_decay") for p in g["params"]}
    assert "model.multi_modal_projector.linear_1.bias" in no_decay
    assert "model.language_model.norm.weight" in no_decay  # RMSNorm
    assert "model.language_model.layers.0.input_layernorm.weight" in no_decay
    decay = {names[id(p)] for g in groups if g["name"].endswith("/decay") for p in g["params"]}
    assert "model.multi_modal_projector.linear_1.weight" in decay and "lm_head.weight" in decay
    assert not any("vision_tower" in n for n in no_decay | decay)  # frozen parts are left out
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        c["trainable"] for c in parameter_counts(model).values())
    torch.optim.AdamW(groups)  # accepted as is


def test_param_groups_connector_lr_defaults_to_lr(model):
    set_trainable(model, "connector")
    groups = param_groups(model, OptimConfig(lr=1e-3))
    assert {g["name"] for g in groups} == {"connector/decay", "connector/no_decay"}
    assert all(g["lr"] == 1e-3 for g in groups)


def test_param_groups_under_lora(model):
    wrapped = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    groups = param_groups(wrapped, OptimConfig(lr=2e-4, connector_lr=2e-5))
    by_name = {g["name"]: g for g in groups}
    assert by_name["connector/decay"]["lr"] == 2e-5
    names = {id(p): n for n, p in wrapped.named_parameters()}
    assert all("lora_" in names[id(p)] for p in by_name["llm/decay"]["params"])
