"""Pretrain and finetune end to end on a local Ray: 2 DeepSpeed workers (ZeRO-2, ZeRO-3) on gloo, tiny model.

One prepared dataset (`world` in conftest.py: a subset of the tiny synthetic world) serves the module. Covered:
the loss falls, frozen parts stay bit-identical, a SIGKILLed worker resumes from the last checkpoint (visible in the summary and in
MLflow, whose server is down 60 s meanwhile and loses no metric), the ZeRO-3 export reproduces the in-training logits under plain `from_pretrained`, and a LoRA
finetune merges into a loadable model (its run storage and output on S3).
"""

from __future__ import annotations

import json
from pathlib import Path

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


def _delete_an_image_in_step_2(cfg, root) -> set[tuple[str, int]]:
    """Delete (after prepare) the image of a sample the pretrain run meets at step 2; (id, step) of every
    sample the run will meet with that image."""
    from components.train.data import read_shards
    from components.train.recipe import plan

    job = plan("pretrain", cfg.pretrain, cfg.model.spec(), cfg.seed, prepared=str(root / "prep"), out="unused")
    table = read_shards(str(root / "prep"), "pretrain", ["id", "image"])
    trained = job.stream[: job.total_steps * cfg.pretrain.global_batch]
    image = table.column("image")[int(trained[cfg.pretrain.global_batch + 3])].as_py()
    Path(image).unlink()
    batch = cfg.pretrain.global_batch
    return {(table.column("id")[int(r)].as_py(), pos // batch + 1) for pos, r in enumerate(trained)
            if table.column("image")[int(r)].as_py() == image}


@pytest.fixture(scope="module")
def pretrained(world):
    from components.train.stage import train_on_ray
    from pipelines.config import load_config

    root, overrides = world
    cfg = load_config("tiny", overrides)
    lost = _delete_an_image_in_step_2(cfg, root)
    summary = train_on_ray("pretrain", cfg.pretrain, cfg.model.spec(), cfg.seed, prepared=str(root / "prep"),
                           out=str(root / "out" / "pretrain"), run_name="pretrain", storage_path=str(root / "runs"))
    return cfg, summary, lost


def test_pretrain_lowers_loss_and_keeps_frozen_parts(world, pretrained):
    from components.train.trainable import set_trainable
    from components.train.zero import fingerprint_tensors

    root, _ = world
    cfg, summary, lost = pretrained
    print("pretrain losses", [round(x, 3) for x in summary["losses"]], f"fit {summary['fit_wall_time_s']:.1f}s")
    assert summary["steps"] == 14 and summary["samples"] == 14 * 32
    assert summary["world_size"] == 2 and summary["threads_per_worker"] == 1  # Ray's default: 1 per 0.5 CPU
    assert summary["final_loss_mean"] < summary["initial_loss_mean"] - 0.2  # only the connector learns
    assert summary["resumed"] is False and summary["restarts"] == 0
    assert summary["trainable"]["language_model"]["trainable"] == 0
    assert summary["metrics"]["step"] == 14  # the final checkpoint carries the last metrics
    # the image deleted after prepare cost its samples only, each named with its reason
    assert summary["lost_samples"] == len(lost) >= 1 and summary["metrics"]["lost_samples"] == len(lost)
    assert {(e["id"], e["step"]) for e in summary["lost_sample_list"]} == lost
    assert {e["reason"] for e in summary["lost_sample_list"]} == {"missing_image"}
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
    """One finetune run, two faults: a Train worker SIGKILLed after step 3 (Ray Train restarts the group from
    the step-2 checkpoint), the MLflow server down 60 s from the first logged step (training goes on; every
    entry arrives after the restart), and then the export checks."""
    import itertools
    import threading
    import time

    from mlflow.tracking import MlflowClient
    from transformers import LlavaForConditionalGeneration

    from components.core.mlflow_sender import sender
    from components.core.mlflow_target import MlflowTarget
    from components.models.assembly import load_llava
    from components.train.stage import train_on_ray
    from pipelines.config import load_config
    from tests.faults.mlflow_server import MlflowServer

    root, overrides = world
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    client = MlflowClient(server.url)
    run_id = client.create_run(client.create_experiment("train-test")).info.run_id
    spool = tmp_path / "spool"  # where the workers keep what they have not sent (this node's)
    outage: dict[str, float] = {}
    abort = threading.Event()

    def take_the_server_down_for_60_s() -> None:
        while not any("finetune/loss" in f.read_text() for f in spool.glob("*/entries.jsonl")):
            if abort.wait(0.2):  # until rank 0 has logged its first step
                return
        server.stop()
        outage["down"] = time.time()
        abort.wait(60)
        outage["restarting"] = time.time()
        server.start()
        outage["up"] = time.time()

    fault = threading.Thread(target=take_the_server_down_for_60_s, daemon=True)
    fault.start()
    monkeypatch.setenv(FAULT_ENV, "3")  # rank 1 is SIGKILLed after step 3; the last checkpoint is step 2
    monkeypatch.setenv(PROBE_ENV, "1")
    cfg = load_config("tiny", overrides)
    out = root / "out" / "finetune"
    keys = ["finetune/loss", "finetune/lr", "finetune/tokens_per_s", "finetune/samples_per_s"]
    expected = [1, 2, 3, 3, 4, 5, 6, 7, 8]  # step 3 twice: before the kill and after the resume
    try:
        summary = train_on_ray("finetune", cfg.finetune, cfg.model.spec(), cfg.seed, prepared=str(root / "prep"),
                               out=str(out), run_name="finetune", storage_path=str(root / "runs"),
                               init_connector=str(root / "out" / "pretrain" / "connector.safetensors"),
                               mlflow=MlflowTarget(server.url, run_id, spool=str(spool)))
        print("finetune losses", [round(x, 3) for x in summary["losses"]], f"fit {summary['fit_wall_time_s']:.1f}s")
        fault.join()
        # Every entry arrives once the server is back: from the workers themselves, or (a worker killed with
        # entries unsent) from its journal, adopted by the next sender on this node: this process's, here.
        sender(str(spool)).start()
        deadline = time.monotonic() + 180
        while True:
            histories = {k: client.get_metric_history(run_id, k) for k in keys}
            if time.monotonic() > deadline or all(sorted(m.step for m in h) == expected for h in histories.values()):
                break
            time.sleep(2)
        print(f"MLflow down {outage['restarting'] - outage['down']:.0f} s (+{outage['up'] - outage['restarting']:.0f}"
              f" s to restart); the history was complete {time.time() - outage['up']:.0f} s after it answered")
        data = client.get_run(run_id).data
    finally:
        abort.set()
        fault.join()
        server.stop()
    assert summary["resumed"] is True and summary["resumed_from_step"] == 2 and summary["restarts"] == 1
    assert summary["steps"] == 8 and summary["zero_stage"] == 3
    assert summary["final_loss_mean"] < summary["initial_loss_mean"] - 0.5
    for k, h in histories.items():
        assert sorted(m.step for m in h) == expected, k
    assert data.tags["finetune.resumed_from_step"] == "2"
    assert data.metrics["finetune/resumed_from_step"] == 2
    unsent = [f for f in spool.glob("*/entries.jsonl")
              if f.stat().st_size > int((f.parent / "sent").read_text() if (f.parent / "sent").exists() else 0)]
    assert not unsent  # nothing is left kept on this node

    # Steps went on while the server was down: entries logged (timestamped) inside the outage, and no step
    # waited on MLflow (its own retries would hold a call about four minutes).
    loss = sorted(histories["finetune/loss"], key=lambda m: m.timestamp)
    during = [m.step for m in loss if outage["down"] * 1000 < m.timestamp < outage["restarting"] * 1000]
    print("steps logged while the server was down:", during)
    assert len(during) >= 2, [(m.step, m.timestamp) for m in loss]
    gaps = [(b.timestamp - a.timestamp) / 1000 for a, b in itertools.pairwise(loss) if b.step == a.step + 1]
    assert max(gaps) < 60, gaps
    # Resumed from the last checkpoint: the steps redone are at most the checkpoint cadence, each with its first
    # attempt's loss (same data order, same state); the summary's curve is the one MLflow holds.
    by_step: dict[int, list[float]] = {}
    for m in loss:
        by_step.setdefault(m.step, []).append(m.value)
    redone = {step for step, values in by_step.items() if len(values) > 1}
    assert redone == {3} and len(redone) <= cfg.finetune.checkpoint_every
    assert all(abs(by_step[s][1] - by_step[s][0]) < 1e-4 for s in redone)
    assert sorted(by_step) == list(range(1, 9))
    assert summary["losses"] == [by_step[s][-1] for s in range(1, 9)]

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
