"""`compile_llm`: the language model under torch.compile (inductor, on CPU here) trains as the eager one does.

float32 on CPU: inductor fuses elementwise ops and may reorder sums, so loss and gradients agree to 1e-5
relative (atol 1e-6), not bit for bit. The compiled model keeps its parameter names, so checkpoints, the
connector file and export read it unchanged.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from components.models.assembly import compile_language_model
from components.train.collate import collate
from components.train.loss import supervised_loss


def _loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    loss = supervised_loss(model, inputs)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation-checkpointing"])
def test_compiled_language_model_keeps_loss_gradients_and_names(build_tiny_llava, make_rows, tiny_spec,
                                                                 checkpointing):
    """As the recipe sets it up: activation checkpointing (the paper configs') first, then compile."""
    torch._dynamo.reset()
    eager = build_tiny_llava(torch.float32, "cpu")
    compiled = build_tiny_llava(torch.float32, "cpu")
    for model in (eager, compiled) if checkpointing else ():
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    compile_language_model(compiled)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert compiled.model.language_model._compiled_call_impl is not None
    packed = dataclasses.replace(tiny_spec, pack_multiple=16)
    # Two layouts and two lengths: the second length recompiles (or runs the dynamic graph) and stays exact.
    for spec, seed in ((tiny_spec, 0), (packed, 0), (packed, 3)):
        inputs = collate(*make_rows(seed=seed), spec)
        ref_loss, ref_grads = _loss_and_grads(eager, inputs)
        loss, grads = _loss_and_grads(compiled, inputs)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert grads.keys() == ref_grads.keys() and len(grads) > 10
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)
