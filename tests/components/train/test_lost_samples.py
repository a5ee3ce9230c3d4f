"""A sample whose image broke after prepare: its labels are masked and it is named with its reason; a
micro-batch with nothing left to supervise still runs forward and backward (every ZeRO rank must)."""

from __future__ import annotations

from components.core.tokenize import IGNORE_INDEX
from components.train.collate import collate
from components.train.loss import supervised_loss
from components.train.lost_samples import gather_lost_samples, mask_lost_samples


def test_masks_only_the_rows_whose_image_failed():
    labels = [[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7], [8, 9]]
    lost: list[dict] = []
    out = mask_lost_samples(labels, ["", "missing_image\t/data/b.jpg: does not exist", ""], ["a", "b", "c"],
                            ["/data/a.jpg", "/data/b.jpg", ""], 7, lost)
    assert out == [[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, IGNORE_INDEX], [8, 9]]
    assert labels[1] == [IGNORE_INDEX, 7]  # the caller's rows are left as they were
    assert lost == [{"id": "b", "image": "/data/b.jpg", "step": 7, "reason": "missing_image",
                     "message": "/data/b.jpg: does not exist"}]
    assert gather_lost_samples(lost) == lost  # one process: its own list


def test_a_micro_batch_with_every_image_lost_gives_a_zero_loss_with_gradients(tiny_llava, tiny_spec, make_rows):
    ids, labels, pixels = make_rows()
    lost: list[dict] = []
    masked = mask_lost_samples(labels, ["missing_image\tgone"] * len(ids), [str(i) for i in range(len(ids))],
                               ["x.jpg"] * len(ids), 1, lost)
    inputs = collate(ids, masked, pixels, tiny_spec)
    tiny_llava.zero_grad(set_to_none=True)
    loss = supervised_loss(tiny_llava, inputs)
    loss.backward()
    assert loss.item() == 0.0 and len(lost) == len(ids)
    grads = [p.grad for p in tiny_llava.parameters() if p.requires_grad]
    assert grads and all(g is None or not g.any() for g in grads)
    assert any(g is not None for g in grads)  # backward ran through the model
