"""components/train/memory.py: a training stage's bytes per worker and per checkpoint, from its DeepSpeed JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from components.models.sizes import model_sizes
from components.train.memory import ADAM_BYTES, train_footprint, trainable_params
from components.train.spec import deepspeed_config_path
from pipelines.config import load_config


def _stage(name: str, *overrides: str):
    cfg = load_config("llava15_7b", list(overrides))
    sizes = model_sizes(cfg.model.spec(), cfg.model.tokenizer)
    sc = getattr(cfg, name)
    return sc, sizes, trainable_params(cfg.model.spec(), cfg.model.tokenizer, sc)


def test_trainable_follows_the_stage():
    _, sizes, pretrain = _stage("pretrain")
    _, _, finetune = _stage("finetune")
    assert pretrain == sizes.connector
    assert finetune == sizes.connector + sizes.llm  # the tower stays frozen


def test_zero3_partitions_weights_gradients_optimizer_and_checkpoint():
    sc, sizes, t = _stage("finetune")
    fp = train_footprint(sizes, t, sc, 8)
    assert fp.zero_stage == 3
    part = math.ceil(t / 8)
    assert fp.device["optimizer"] == ADAM_BYTES * part
    assert 2 * sizes.total / 8 < fp.device["weights"] < 2 * sizes.total / 4  # 1/8 plus the gathered layers
    # Every rank writes its optimizer partition and its bf16 parameter partition: 14 bytes per parameter in all.
    assert fp.checkpoint_rank0 == fp.checkpoint_rank == (ADAM_BYTES + 2) * part
    assert fp.checkpoint_total(8) == 8 * (ADAM_BYTES + 2) * part
    assert fp.output == 2 * sizes.total  # the finetuned model in bf16
    # Twice the workers: the partitions halve.
    assert train_footprint(sizes, t, sc, 16).device["optimizer"] == ADAM_BYTES * math.ceil(t / 16)


def test_zero2_keeps_whole_weights_and_rank0_writes_the_trainable_ones():
    sc, sizes, t = _stage("pretrain")
    fp = train_footprint(sizes, t, sc, 8)
    assert fp.zero_stage == 2 and fp.device["weights"] == 2 * sizes.total
    assert fp.checkpoint_rank == ADAM_BYTES * math.ceil(t / 8)
    assert fp.checkpoint_rank0 == fp.checkpoint_rank + 2 * t
    assert fp.output == 2 * sizes.connector


def test_activation_checkpointing_and_micro_batch():
    sc, sizes, t = _stage("finetune")
    on = train_footprint(sizes, t, sc, 8).device["activations"]
    off = train_footprint(sizes, t, sc.model_copy(update={"gradient_checkpointing": False}), 8).device["activations"]
    assert off > 10 * on  # every layer's activations instead of each layer's input and one layer
    half = sc.model_copy(update={"per_device_batch": sc.per_device_batch // 2})
    assert train_footprint(sizes, t, half, 8).device["activations"] * 2 == on


def test_offload_moves_the_optimizer_to_host_memory(tmp_path):
    sc, sizes, t = _stage("finetune")
    ds = json.loads(Path(deepspeed_config_path(sc)).read_text())
    ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    path = tmp_path / "zero3_offload.json"
    path.write_text(json.dumps(ds))
    off = train_footprint(sizes, t, sc.model_copy(update={"deepspeed": str(path)}), 8)
    assert "optimizer" not in off.device and off.host_offload["optimizer"] == ADAM_BYTES * math.ceil(t / 8)
