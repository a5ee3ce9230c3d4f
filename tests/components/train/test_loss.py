"""The supervised-positions loss equals transformers' full-logits loss, value and gradients, in both layouts."""

from __future__ import annotations

import pytest
import torch

from components.core.tokenize import IGNORE_INDEX
from components.train.collate import CollateSpec, collate
from components.train.loss import supervised_loss


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pack", [None, 16])
def test_supervised_loss_equals_the_full_logits_loss(tiny_llava, tiny_spec, make_rows, pack):
    spec = CollateSpec(**{**tiny_spec.__dict__, "pack_multiple": pack})
    inputs = collate(*make_rows(), spec)
    tiny_llava.zero_grad(set_to_none=True)
    reference = tiny_llava(**inputs, use_cache=False).loss  # lm_head over every position
    reference.backward()
    expected = _grads(tiny_llava)

    seen = []
    hook = tiny_llava.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1]))
    tiny_llava.zero_grad(set_to_none=True)
    try:
        loss = supervised_loss(tiny_llava, inputs)
        loss.backward()
    finally:
        hook.remove()
    labels = inputs["labels"]
    kept = int((labels[:, 1:] != IGNORE_INDEX).any(0).sum())  # positions supervised in some row
    assert seen == [torch.Size([labels.shape[0], kept])] and kept < labels.shape[1]  # context positions skipped
    if pack:  # one row: exactly the supervised positions reach lm_head
        assert kept == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    grads = _grads(tiny_llava)
    assert grads.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_frozen_vision_tower_records_no_graph(tiny_llava, tiny_spec, make_rows):
    """The tower is frozen in both stages, so autograd keeps nothing of it (no_grad would change nothing)."""
    tiny_llava.zero_grad(set_to_none=True)
    tiny_llava.model.vision_tower.requires_grad_(False)
    features = []  # what the tower hands to the connector
    hook = tiny_llava.model.multi_modal_projector.register_forward_hook(lambda m, args, out: features.append(args[0]))
    try:
        supervised_loss(tiny_llava, collate(*make_rows(), tiny_spec)).backward()
    finally:
        hook.remove()
        tiny_llava.model.vision_tower.requires_grad_(True)
    assert features and features[0].grad_fn is None and not features[0].requires_grad
    assert all(p.grad is None for p in tiny_llava.model.vision_tower.parameters())
