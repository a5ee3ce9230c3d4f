"""Pretrain and finetune end to end on a local Ray: 2 DeepSpeed workers (ZeRO-2, ZeRO-3) on gloo, tiny model.

One prepared dataset (`world` in conftest.py: a subset of the tiny synthetic world) serves the module. Covered:
the loss falls, frozen parts stay bit-identical, a killed worker resumes from the last checkpoint (visible in the summary and in
MLflow), the ZeRO-3 export reproduces the in-training logits under plain `from_pretrained`, and a LoRA
finetune merges into a loadable model (its run storage and output on S3).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from components.train.env import FAULT_ENV, PROBE_ENV

pytestmark = pytest.mark.e2e


def _tokenizer(root):
    from components.models.tokenizer import load_tokenizer

    return load_tokenizer(str(root / "prep" / "tokenizer"))


def _fresh_model(cfg, root):
    """The model every training worker starts from (same config, same seed)."""
    from components.models.assembly import build_model

    return build_model(cfg.model.spec(), _tokenizer(root), seed=cfg.seed)


@pytest.fixture(scope="module")
def pretrained(world):
    from components.train.stage import train_on_ray
    from pipelines.config import load_config

    root, overrides = world
    cfg = load_config("tiny", overrides)
    summary = train_on_ray("pretrain", cfg.pretrain, cfg.model.spec(), cfg.seed, prepared=str(root / "prep"),
                           out=str(root / "out" / "pretrain"), run_name="pretrain", storage_path=str(root / "runs"))
    return cfg, summary


def test_pretrain_lowers_loss_and_keeps_frozen_parts(world, pretrained):
    from components.train.trainable import set_trainable
    from components.train.zero import fingerprint_tensors

    root, _ = world
    cfg, summary = pretrained
    print("pretrain losses", [round(x, 3) for x in summary["losses"]], f"fit {summary['fit_wall_time_s']:.1f}s")
    assert summary["steps"] == 14 and summary["samples"] == 14 * 32
    assert summary["world_size"] == 2 and summary["threads_per_worker"] == 1  # Ray's default: 1 per 0.5 CPU
    assert summary["final_loss_mean"] < summary["initial_loss_mean"] - 0.2  # only the connector learns
    assert summary["resumed"] is False and summary["restarts"] == 0
    assert summary["trainable"]["language_model"]["trainable"] == 0
    assert summary["metrics"]["step"] == 14  # the final checkpoint carries the last metrics
    on_disk = json.loads((root / "out" / "pretrain" / "summary.json").read_text())
    assert on_disk["losses"] == summary["losses"]

    # LLM and vision tower are bit-identical to the model training started from
    fresh = _fresh_model(cfg, root)
    set_trainable(fresh, "connector")
    frozen = {n: p for n, p in fresh.named_parameters() if not p.requires_grad}
    assert summary["frozen_sha256"] == fingerprint_tensors(frozen)
    # the connector did train
    saved = load_file(str(root / "out" / "pretrain" / "connector.safetensors"))
    start = {k: v for k, v in fresh.model.multi_modal_projector.state_dict().items()}
    assert saved.keys() == start.keys()
    assert any(not torch.equal(saved[k], start[k]) for k in saved)


def test_finetune_resumes_after_worker_failure_and_exports(world, pretrained, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers import LlavaForConditionalGeneration

    from components.core.mlflow_target import MlflowTarget
    from components.models.assembly import load_llava
    from components.train.stage import train_on_ray
    from pipelines.config import load_config

    root, overrides = world
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("train-test"))
    monkeypatch.setenv(FAULT_ENV, "3")  # rank 1 dies after step 3; the last checkpoint is step 2
    monkeypatch.setenv(PROBE_ENV, "1")
    cfg = load_config("tiny", overrides)
    out = root / "out" / "finetune"
    summary = train_on_ray("finetune", cfg.finetune, cfg.model.spec(), cfg.seed, prepared=str(root / "prep"),
                           out=str(out), run_name="finetune", storage_path=str(root / "runs"),
                           init_connector=str(root / "out" / "pretrain" / "connector.safetensors"),
                           mlflow=MlflowTarget(uri, run.info.run_id))
    print("finetune losses", [round(x, 3) for x in summary["losses"]], f"fit {summary['fit_wall_time_s']:.1f}s")
    assert summary["resumed"] is True and summary["resumed_from_step"] == 2 and summary["restarts"] == 1
    assert summary["steps"] == 8 and summary["zero_stage"] == 3
    assert summary["final_loss_mean"] < summary["initial_loss_mean"] - 0.5

    data = client.get_run(run.info.run_id).data
    assert data.tags["finetune.resumed_from_step"] == "2"
    assert data.metrics["finetune/resumed_from_step"] == 2
    history = client.get_metric_history(run.info.run_id, "finetune/loss")
    # step 3 ran twice (before the kill and after the resume) on the same data from the same state
    again = sorted(m.value for m in history if m.step == 3)
    assert len(again) == 2 and again[1] - again[0] < 1e-4
    assert sorted({m.step for m in history}) == list(range(1, 9))

    # the ZeRO-3 export loads with plain transformers and reproduces the in-training logits
    model = LlavaForConditionalGeneration.from_pretrained(str(out / "model")).eval()
    probe = load_file(str(out / "export_probe.safetensors"))
    with torch.no_grad():
        logits = model(**{k: v for k, v in probe.items() if k != "logits"}).logits
    mask = probe["attention_mask"].bool()
    assert torch.allclose(logits[mask], probe["logits"][mask], atol=1e-5)
    assert load_llava(str(out / "model")).config.image_aspect_ratio == "pad"

    # the vision tower is bit-identical to the one training started from
    fresh = _fresh_model(cfg, root)
    tower = fresh.model.vision_tower.state_dict()
    assert all(torch.equal(v, model.model.vision_tower.state_dict()[k]) for k, v in tower.items())

    # the processor expands <image> to the model's image tokens
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(out / "model"))
    enc = processor(images=Image.new("RGB", (90, 60)), text="<image>\nWhat is it?", return_tensors="pt")
    assert (enc["input_ids"] == model.config.image_token_id).sum() == model.config.image_seq_length
    model(**enc)  # and the model accepts what it produces


def test_lora_finetune_merges_into_a_loadable_model(world, pretrained, s3_server, monkeypatch):
    import s3fs
    from transformers import LlavaForConditionalGeneration

    from components.models.assembly import load_llava
    from components.models.remote import localize
    from components.train.stage import train_on_ray
    from pipelines.config import load_config

    root, overrides = world
    s3 = s3fs.S3FileSystem()
    s3.mkdir("train-bucket")
    monkeypatch.setenv(PROBE_ENV, "1")
    cfg = load_config("tiny", [*overrides, "finetune.lora={r: 8, alpha: 16, dropout: 0.05}",
                               "finetune.max_steps=3", "finetune.checkpoint_every=0"])
    summary = train_on_ray("finetune", cfg.finetune, cfg.model.spec(), cfg.seed, prepared=str(root / "prep"),
                           out="s3://train-bucket/out/lora", run_name="lora", storage_path="s3://train-bucket/runs",
                           init_connector=str(root / "out" / "pretrain" / "connector.safetensors"))
    print("lora losses", [round(x, 3) for x in summary["losses"]], f"fit {summary['fit_wall_time_s']:.1f}s")
    assert summary["lora"] is True and summary["steps"] == 3
    assert 0 < summary["trainable"]["language_model"]["trainable"] < summary["trainable"]["language_model"]["frozen"]
    assert s3.exists("train-bucket/out/lora/adapter/adapter_config.json")
    assert s3.exists("train-bucket/out/lora/adapter/connector.safetensors")
    assert any("checkpoint_" in p for p in s3.ls("train-bucket/runs/lora"))

    local = localize("s3://train-bucket/out/lora/model")
    model = LlavaForConditionalGeneration.from_pretrained(local).eval()
    assert not any("lora" in k for k in model.state_dict())
    probe = load_file(localize("s3://train-bucket/out/lora") + "/export_probe.safetensors")
    with torch.no_grad():
        logits = model(**{k: v for k, v in probe.items() if k != "logits"}).logits
    mask = probe["attention_mask"].bool()
    assert torch.allclose(logits[mask], probe["logits"][mask], atol=1e-4)  # merge rounds in fp32
    load_llava(local)
