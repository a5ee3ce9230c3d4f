import pytest
import torch
from torch import nn
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from components.models.assembly import build_model, load_llava, num_image_tokens
from components.models.connectors import (
    build_connector,
    connector_of,
    connector_spec_of,
    connector_state_dict,
    is_hf_native,
    load_connector,
    save_connector,
    set_connector,
)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(("spec", "n_linear", "n_gelu"), [
    ("linear", 1, 0), ("mlp1x_gelu", 1, 0), ("mlp2x_gelu", 2, 1), ("mlp3x_gelu", 3, 2),
])
def test_connector_shapes_follow_the_reference_builder(spec, n_linear, n_gelu):
    conn = build_connector(spec, 24, 40)
    out = conn(torch.randn(2, 16, 24))
    assert out.shape == (2, 16, 40)
    linears = _linears(conn)
    assert len(linears) == n_linear
    assert (linears[0].in_features, linears[0].out_features) == (24, 40)
    assert all((lin.in_features, lin.out_features) == (40, 40) for lin in linears[1:])
    assert sum(isinstance(m, nn.GELU) or "GELU" in type(m).__name__ for m in conn.modules()) == n_gelu


def test_default_connector_is_transformers_own_projector():
    assert isinstance(build_connector("mlp2x_gelu", 8, 16), LlavaMultiModalProjector)
    assert is_hf_native("mlp2x_gelu")
    assert not any(is_hf_native(s) for s in ("linear", "mlp3x_gelu", "identity"))


def test_identity_passes_features_through_and_needs_equal_widths():
    x = torch.randn(1, 4, 16)
    assert torch.equal(build_connector("identity", 16, 16)(x), x)
    with pytest.raises(ValueError, match="equal widths.*32.*64"):
        build_connector("identity", 32, 64)


@pytest.mark.parametrize("spec", ["mlp", "mlp0x_gelu", "conv", "MLP2X_GELU"])
def test_unknown_connector_lists_the_valid_ones(spec):
    with pytest.raises(ValueError, match=r"unknown connector.*linear, mlp\{N\}x_gelu.*identity"):
        build_connector(spec, 8, 8)


def test_auto_must_be_resolved_by_the_sweep():
    with pytest.raises(ValueError, match="sweep"):
        build_connector("auto", 8, 8)


@pytest.mark.parametrize("spec", ["linear", "mlp2x_gelu", "mlp3x_gelu", "identity"])
def test_each_connector_trains_inside_the_model(spec, tokenizer, tiny_config, make_batch):
    # identity needs vision width == LLM width: the tiny tower is 32 wide.
    cfg = tiny_config(connector=spec, llm_hidden=32)
    model = build_model(cfg, tokenizer).train()
    assert connector_spec_of(model) == spec
    assert model.config.mm_projector_type == spec
    out = model(**make_batch(tokenizer, num_image_tokens(cfg.vision)))
    assert out.logits.shape[-1] == len(tokenizer)
    out.loss.backward()
    conn_params = list(connector_of(model).parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conn_params)
    # Gradient reaches the vision tower only through the connector: proves the slot is wired in.
    patch = model.model.vision_tower.get_input_embeddings().weight
    assert patch.grad is not None and patch.grad.abs().sum() > 0


def test_identity_in_a_model_with_unequal_widths_is_refused(tokenizer, tiny_config):
    with pytest.raises(ValueError, match="equal widths"):
        build_model(tiny_config(connector="identity", llm_hidden=64), tokenizer)


def test_save_and_load_connector_round_trip(tmp_path, tokenizer, tiny_config):
    a = build_model(tiny_config(connector="mlp3x_gelu"), tokenizer, seed=1)
    b = build_model(tiny_config(connector="mlp3x_gelu"), tokenizer, seed=2)
    path = save_connector(a, tmp_path / "connector.safetensors")
    assert not torch.equal(connector_state_dict(a)["0.weight"], connector_state_dict(b)["0.weight"])
    load_connector(b, path)
    sa, sb = connector_state_dict(a), connector_state_dict(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_connector_refuses_another_spec_or_missing_file(tmp_path, tokenizer, tiny_config):
    lin = build_model(tiny_config(connector="linear"), tokenizer)
    mlp = build_model(tiny_config(connector="mlp2x_gelu"), tokenizer)
    path = save_connector(lin, tmp_path / "lin.safetensors")
    with pytest.raises(ValueError, match="lin.safetensors.*'linear'.*'mlp2x_gelu'"):
        load_connector(mlp, path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_connector(mlp, tmp_path / "nope.safetensors")


def test_load_connector_names_shape_mismatches(tmp_path, tokenizer, tiny_config):
    small = build_model(tiny_config(connector="linear", llm_hidden=32), tokenizer)
    wide = build_model(tiny_config(connector="linear", llm_hidden=64), tokenizer)
    path = save_connector(small, tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match=r"c.safetensors.*0.weight: shape \(32, 32\) in file, \(64, 32\)"):
        load_connector(wide, path)


def test_non_native_connector_survives_save_and_load_llava(tmp_path, tokenizer, tiny_config, make_batch):
    cfg = tiny_config(connector="mlp3x_gelu")
    model = build_model(cfg, tokenizer, seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_llava(tmp_path / "ckpt")
    assert connector_spec_of(loaded) == "mlp3x_gelu"
    inputs = make_batch(tokenizer, num_image_tokens(cfg.vision))
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


def test_set_connector_replaces_the_projector_slot(tokenizer, tiny_config):
    model = build_model(tiny_config(), tokenizer)
    set_connector(model, "linear")
    assert connector_spec_of(model) == "linear"
    assert model.model.multi_modal_projector is connector_of(model)
