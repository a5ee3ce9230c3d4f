"""Gradient clipping on the recipe's path: our DeepSpeed config, the engine and a client AdamW, without Ray.

AdamW's first step leaves exp_avg = (1 - beta1) * g, so the gradient the update actually used can be read
back from the optimizer state (the flat fp32 partitions under ZeRO-2 and ZeRO-3) and its norm measured.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import torch

from components.train.zero import deepspeed_config
from pipelines.config import load_config

BETA1 = 0.9
TINY_NORM = 1e-3


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A one-process gloo group, as DeepSpeed reads it from the environment (no Ray)."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")
    yield
    if started:
        dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def one_step(zero: int, precision: str, max_grad_norm: float) -> tuple[float, float, dict[str, torch.Tensor]]:
    """One optimizer step (two micro-batches) as the recipe takes it: (pre-clip norm DeepSpeed reports,
    norm of the gradient AdamW applied, parameters after the step)."""
    import deepspeed

    stage = load_config("tiny", [f"finetune.deepspeed=deepspeed/zero{zero}.json", f"finetune.precision={precision}",
                                 f"finetune.optim.max_grad_norm={max_grad_norm}", "finetune.global_batch=8",
                                 "finetune.per_device_batch=4"]).finetune
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(BETA1, 0.999))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      config=deepspeed_config(stage, world=1, hidden_size=16))
    data = torch.Generator().manual_seed(1)
    for _ in range(stage.gradient_accumulation):
        x, y = torch.randn(4, 8, generator=data).to(dtype), torch.randn(4, 1, generator=data).to(dtype)
        loss = 100 * ((engine(x) - y) ** 2).mean()  # a gradient norm far above 1
        engine.backward(loss)
        engine.step()
    inner = engine.optimizer.optimizer  # the client AdamW inside DeepSpeed's ZeRO optimizer
    applied = sum(float(s["exp_avg"].double().pow(2).sum()) for s in inner.state.values()) ** 0.5 / (1 - BETA1)
    params = {}
    for name, p in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            params[name] = p.detach().float().clone()
    return float(engine.get_global_grad_norm()), applied, params


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("zero", [2, 3])
def test_max_grad_norm_clips_the_update(process_group: None, zero: int, precision: str) -> None:
    norm, unclipped, free = one_step(zero, precision, 0.0)
    norm_clipped, clipped, bounded = one_step(zero, precision, TINY_NORM)
    assert norm_clipped == pytest.approx(norm)  # the logged grad_norm is the norm before clipping
    assert norm > 10
    assert unclipped == pytest.approx(norm, rel=1e-3)  # 0 really is off
    assert clipped <= TINY_NORM * (1 + 1e-5)
    assert clipped == pytest.approx(TINY_NORM, rel=1e-3)
    assert any(not torch.equal(free[k], bounded[k]) for k in free)
