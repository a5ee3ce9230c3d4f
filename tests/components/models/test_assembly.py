import fsspec
import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)

from components.models.assembly import build_model, num_image_tokens, vision_image_size
from components.models.connectors import connector_spec_of
from components.models.spec import LLMConfig, ModelConfig, ModelSpec, VisionConfig
from components.models.tokenizer import image_token_id

TOWER = {"image_size": 56, "patch_size": 14, "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 2, "intermediate_size": 64}


def test_tiny_model_forward_gives_logits_and_loss(tokenizer, tiny_config, make_batch):
    cfg = tiny_config()
    model = build_model(cfg, tokenizer)
    assert isinstance(model, LlavaForConditionalGeneration)
    assert num_image_tokens(cfg.vision) == 16  # (56 / 14)², CLS dropped
    inputs = make_batch(tokenizer, 16)
    out = model(**inputs)
    assert out.logits.shape == (2, inputs["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.loss) and out.loss > 0
    assert out.image_hidden_states.shape == (2 * 16, 32)


def test_config_carries_the_tokenizer_and_image_settings(tokenizer, tiny_config):
    model = build_model(tiny_config(), tokenizer)
    c = model.config
    assert c.image_token_index == image_token_id(tokenizer)
    assert c.image_seq_length == 16
    assert c.vision_feature_layer == -2 and c.vision_feature_select_strategy == "default"
    assert c.text_config.vocab_size == len(tokenizer) == model.get_input_embeddings().num_embeddings
    t = c.text_config
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (1, 2, tokenizer.pad_token_id)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert connector_spec_of(model) == c.mm_projector_type == "mlp2x_gelu"


def test_feature_select_and_layer_reach_the_model(tokenizer, tiny_config, make_batch):
    cfg = tiny_config(feature_layer=-1, feature_select="cls_patch")
    model = build_model(cfg, tokenizer)
    assert model.config.vision_feature_layer == -1
    assert model.config.vision_feature_select_strategy == "full"
    assert num_image_tokens(cfg.vision) == model.config.image_seq_length == 17
    model(**make_batch(tokenizer, 17))  # CLS kept: 17 features per image
    with pytest.raises(ValueError, match="do not match"):
        model(**make_batch(tokenizer, 16))


def test_feature_layer_changes_the_features(tokenizer, tiny_config, make_batch):
    inputs = make_batch(tokenizer, 16)
    a = build_model(tiny_config(feature_layer=-2), tokenizer)(**inputs).image_hidden_states
    b = build_model(tiny_config(feature_layer=-1), tokenizer)(**inputs).image_hidden_states
    assert not torch.allclose(a, b)


def test_image_size_override_for_random_towers(tokenizer, tiny_config, make_batch):
    cfg = tiny_config(image_size=28)
    assert vision_image_size(cfg.vision) == 28 and num_image_tokens(cfg.vision) == 4
    model = build_model(cfg, tokenizer)
    assert model.config.vision_config.image_size == 28
    model(**make_batch(tokenizer, 4, image_size=28))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"feature_layer": -4}, "feature_layer=-4.*2 layers"),
    ({"feature_layer": 3}, "feature_layer=3"),
    ({"image_size": 50}, "50 is not a multiple of the patch size 14"),
])
def test_bad_vision_knobs_are_clear_errors(tokenizer, tiny_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(tiny_config(**overrides), tokenizer)


def test_auto_connector_must_be_resolved_first(tokenizer, tiny_config):
    with pytest.raises(ValueError, match="sweep must resolve"):
        build_model(tiny_config(connector="auto"), tokenizer)


def test_seeded_and_leaves_the_global_rng_alone(tokenizer, tiny_config):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(tiny_config(), tokenizer, seed=5).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model(tiny_config(), tokenizer, seed=5).state_dict()
    c = build_model(tiny_config(), tokenizer, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_model_spec_alone_builds_the_same_model(tokenizer, tiny_config):
    """Training gets `cfg.model.spec()` (no tokenizer settings): it builds what the whole section builds."""
    cfg = tiny_config(connector="linear")
    spec = cfg.spec()
    assert type(spec) is ModelSpec and not hasattr(spec, "tokenizer") and spec.connector == "linear"
    a = build_model(cfg, tokenizer, seed=5).state_dict()
    b = build_model(spec, tokenizer, seed=5).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dtype_and_eval_mode(tokenizer, tiny_config):
    model = build_model(tiny_config(), tokenizer, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training


# ------------------------------------------------------------------ real checkpoints (saved here, not downloaded)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """A CLIPVisionModel, a full CLIPModel (like openai/clip-vit-large-patch14-336) and a Llama whose
    vocabulary is the base tokenizer's (LLaVA tokens not yet in it), saved with save_pretrained."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(**TOWER))
    tower.save_pretrained(root / "clip_vision")
    clip = CLIPModel(CLIPConfig(vision_config=TOWER, text_config={
        "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "vocab_size": 64}, projection_dim=8))
    clip.save_pretrained(root / "clip_full")
    base_vocab = len(tokenizer) - 2
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=base_vocab, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=64,
                                       max_position_embeddings=128))
    llm.save_pretrained(root / "llama")
    return root, tower, clip, llm


def _real_config(vision: str, llm: str, **vision_kw) -> ModelConfig:
    return ModelConfig(vision=VisionConfig(name_or_path=vision, **vision_kw), llm=LLMConfig(name_or_path=llm))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_real_checkpoints_are_loaded_and_resized(checkpoints, tokenizer, make_batch):
    root, tower, _, llm = checkpoints
    cfg = _real_config(str(root / "clip_vision"), str(root / "llama"))
    assert vision_image_size(cfg.vision) == 56 and num_image_tokens(cfg.vision) == 16
    model = build_model(cfg, tokenizer)
    assert _same(model.model.vision_tower, tower)
    n = len(tokenizer) - 2
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tokenizer) == model.config.text_config.vocab_size
    assert torch.equal(emb[:n], llm.get_input_embeddings().weight)
    assert torch.equal(model.lm_head.weight[:n], llm.lm_head.weight)
    layer = model.model.language_model.layers[1].mlp.down_proj.weight
    assert torch.equal(layer, llm.model.layers[1].mlp.down_proj.weight)
    assert model.config.text_config.pad_token_id == tokenizer.pad_token_id
    out = model(**make_batch(tokenizer, 16))
    assert out.logits.shape[-1] == len(tokenizer) and torch.isfinite(out.loss)


def test_vision_part_of_a_full_clip_checkpoint(checkpoints, tokenizer):
    root, _, clip, _ = checkpoints
    model = build_model(_real_config(str(root / "clip_full"), str(root / "llama")), tokenizer)
    ours = model.model.vision_tower.get_input_embeddings().weight
    assert torch.equal(ours, clip.vision_model.embeddings.patch_embedding.weight)


def test_image_size_override_resizes_checkpoint_positions(checkpoints, tokenizer, make_batch):
    root, tower, _, _ = checkpoints
    cfg = _real_config(str(root / "clip_vision"), str(root / "llama"), image_size=84)
    assert vision_image_size(cfg.vision) == 84 and num_image_tokens(cfg.vision) == 36
    model = build_model(cfg, tokenizer)
    assert model.config.vision_config.image_size == 84
    pos = next(v for k, v in model.model.vision_tower.state_dict().items() if k.endswith("position_embedding.weight"))
    old = next(v for k, v in tower.state_dict().items() if k.endswith("position_embedding.weight"))
    assert pos.shape == (37, 32) and torch.equal(pos[0], old[0])  # CLS position kept as is
    model(**make_batch(tokenizer, 36, image_size=84))


def test_remote_checkpoints_are_copied_locally(checkpoints, tokenizer, tmp_path, monkeypatch):
    # fsspec's memory filesystem stands in for s3://.
    monkeypatch.setenv("LLAVA_PIPELINE_CACHE", str(tmp_path / "cache"))
    root, tower, _, _ = checkpoints
    fs = fsspec.filesystem("memory")
    for name in ("clip_vision", "llama"):
        for f in (root / name).iterdir():
            fs.pipe(f"/models/{name}/{f.name}", f.read_bytes())
    model = build_model(_real_config("memory://models/clip_vision", "memory://models/llama"), tokenizer)
    assert _same(model.model.vision_tower, tower)


def test_missing_checkpoints_name_the_field(checkpoints, tokenizer, tmp_path):
    root = checkpoints[0]
    with pytest.raises(ValueError, match="model.vision.name_or_path"):
        build_model(_real_config(str(tmp_path / "nope"), str(root / "llama")), tokenizer)
    with pytest.raises(ValueError, match="model.llm.name_or_path"):
        build_model(_real_config(str(root / "clip_vision"), str(tmp_path / "nope")), tokenizer)
