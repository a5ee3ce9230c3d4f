"""Two training settings marked SCHEDULING (never fingerprinted: components/train/spec.py) change how the work
runs, not what it computes. Fast: no Ray, no DeepSpeed.

- `gradient_checkpointing`: activations recomputed in the backward pass give the same loss and gradients.
- `num_workers`: at a fixed global_batch and per_device_batch the recipe's data order (`plan`'s stream) is the
  same for any world size, and each optimizer step trains on the same micro-batches, whichever rank and
  accumulation micro-step takes each one (`rank_positions`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from components.core.fields import field_type, is_scheduling, metadata
from components.train.collate import collate
from components.train.grouping import rank_positions
from components.train.loss import supervised_loss
from components.train.recipe import plan
from components.train.spec import TrainStageConfig
from pipelines.config import load_config


def test_the_settings_proven_here_are_marked_scheduling():
    marked = {name for name, info in TrainStageConfig.model_fields.items()
              if is_scheduling(metadata(field_type(info)))}
    assert marked == {"num_workers", "use_gpu", "cpus_per_worker", "threads_per_worker", "gradient_checkpointing",
                      "packing", "compile_llm", "checkpoint_every", "checkpoint_every_minutes", "keep_checkpoints",
                      "max_failures"}


def _loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    loss = supervised_loss(model, inputs)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_keeps_loss_and_gradients(build_tiny_llava, make_rows, tiny_spec):
    """float32 on CPU, set up as the recipe does (non-reentrant checkpoints, input grads on)."""
    plain = build_tiny_llava(torch.float32, "cpu")
    checkpointed = build_tiny_llava(torch.float32, "cpu")
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed.enable_input_require_grads()
    assert [layer.gradient_checkpointing for layer in checkpointed.model.language_model.layers] == [True, True]
    assert not any(layer.gradient_checkpointing for layer in plain.model.language_model.layers)
    # Checkpointing really is on: a decoder layer's first norm runs again in the backward pass (recomputation;
    # transformers checkpoints the layer's `forward`, and the recomputation stops once it has what the backward
    # needs, so the first op of the layer is the one sure to run twice).
    calls = {"plain": 0, "checkpointed": 0}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        norm = model.model.language_model.layers[0].input_layernorm
        norm.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    packed = dataclasses.replace(tiny_spec, pack_multiple=16)
    for spec, seed, text_only in ((tiny_spec, 0, False), (packed, 3, False), (tiny_spec, 5, True)):
        inputs = collate(*make_rows(seed=seed, text_only=text_only), spec)
        ref_loss, ref_grads = _loss_and_grads(plain, inputs)
        loss, grads = _loss_and_grads(checkpointed, inputs)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        assert grads.keys() == ref_grads.keys() and len(grads) > 10
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=0, msg=name)
    assert calls == {"plain": 3, "checkpointed": 6}


def _prepared(root, n: int = 83, seed: int = 0) -> str:
    """A prepare output as `plan` reads it: finetune shards with modality_length (negative: text only) and
    image columns, mixed modalities and lengths, in two shards."""
    rng = np.random.default_rng(seed)
    has_image = rng.random(n) < 0.7
    lengths = rng.integers(5, 200, n)
    shards = root / "finetune" / "shards"
    shards.mkdir(parents=True)
    for part, rows in enumerate(np.array_split(np.arange(n), 2)):
        pq.write_table(pa.table({
            "id": [f"r{i}" for i in rows],
            "image": [f"/img/{i}.jpg" if has_image[i] else "" for i in rows],
            "modality_length": [int(lengths[i]) if has_image[i] else -int(lengths[i]) for i in rows],
        }), shards / f"part-{part:05d}.parquet")
    return str(root)


def _plan(prepared, tmp_path, **settings):
    cfg = load_config("tiny", [f"finetune.{k}={v}" for k, v in settings.items()])
    sc = cfg.finetune
    return sc, plan("finetune", sc, cfg.model.spec(), cfg.seed, prepared=prepared, out=str(tmp_path / "out"))


def _step_batches(sc, stream: np.ndarray, step: int) -> list[tuple[int, ...]]:
    """The micro-batches (sample numbers) every rank trains on in optimizer step `step`, in rank-then-
    micro-step order, as the recipe cuts them."""
    world, batch, accum = sc.num_workers, sc.per_device_batch, sc.gradient_accumulation
    out = []
    for rank in range(world):
        positions = rank_positions(step, step + 1, rank=rank, world=world, batch_size=batch, accumulation=accum)
        assert len(positions) == batch * accum
        out += [tuple(stream[positions[i:i + batch]].tolist()) for i in range(0, len(positions), batch)]
    return out


def test_data_order_is_independent_of_the_number_of_workers(tmp_path):
    prepared = _prepared(tmp_path / "prep")
    fixed = {"global_batch": 8, "per_device_batch": 4, "epochs": 2.5, "group_by_modality_length": "true"}
    one_sc, one = _plan(prepared, tmp_path, num_workers=1, **fixed)
    two_sc, two = _plan(prepared, tmp_path, num_workers=2, **fixed)
    assert (one_sc.gradient_accumulation, two_sc.gradient_accumulation) == (2, 1)
    assert one.total_steps == two.total_steps == 26  # ceil(2.5 × 83 / 8)
    assert np.array_equal(one.stream, two.stream)
    # the stream covers every step, epoch after epoch
    assert len(one.stream) >= one.total_steps * 8 and sorted(one.stream[:83].tolist()) == list(range(83))

    global_batch = fixed["global_batch"]
    for step in range(one.total_steps):
        # All ranks of one step together take exactly that step's stream positions, at either world size.
        for sc in (one_sc, two_sc):
            every = np.concatenate([
                rank_positions(step, step + 1, rank=r, world=sc.num_workers, batch_size=sc.per_device_batch,
                               accumulation=sc.gradient_accumulation) for r in range(sc.num_workers)])
            assert sorted(every.tolist()) == list(range(step * global_batch, (step + 1) * global_batch))
        # And the same micro-batches (each one's loss is a mean over its own tokens, so this matters too).
        assert sorted(_step_batches(one_sc, one.stream, step)) == sorted(_step_batches(two_sc, two.stream, step))

    # The grouped order does depend on the micro-batch count of a step (global / per-device batch): were it
    # cut by workers or accumulation alone, the streams above would differ.
    _, finer = _plan(prepared, tmp_path, num_workers=1, **{**fixed, "per_device_batch": 2})
    assert not np.array_equal(finer.stream, one.stream)
