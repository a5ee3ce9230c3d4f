"""The packed layout is the padded one without the padding: same loss, same gradients, no cross-sample attention.

A tiny random-init LLaVA in float64 on CPU, attention through transformers' sdpa with the block-diagonal mask it
builds from packed position_ids (flex attention builds its BlockMask from the same mask function on GPU; flex
has no backward on CPU). Tolerance: float64, so loss and gradients agree to 1e-10 relative (they differ only by
summation order inside matmuls); logits of untouched samples to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.train.collate import (
    PACK_MULTIPLE,
    CollateSpec,
    collate,
    sample_length,
    use_packed_attention,
)


def _loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _packed(spec: CollateSpec) -> CollateSpec:
    return CollateSpec(**{**spec.__dict__, "pack_multiple": 16})


@pytest.mark.parametrize("ensure_image", [False, True])
def test_packed_loss_and_gradients_equal_padded(tiny_llava, make_rows, tiny_spec, ensure_image):
    ids, labels, pixels = make_rows(text_only=ensure_image)  # all text: a blank image joins
    padded = collate(ids, labels, pixels, tiny_spec, ensure_image=ensure_image)
    packed = collate(ids, labels, pixels, _packed(tiny_spec), ensure_image=ensure_image)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert packed["input_ids"].shape[1] < padded["input_ids"].numel()  # the padding is gone
    ref, ref_grads = _loss_and_grads(tiny_llava, padded)
    out, grads = _loss_and_grads(tiny_llava, packed)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-10)
    assert ref_grads.keys() == grads.keys() and len(grads) > 10
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_packed_logits_equal_each_sample_alone(tiny_llava, make_rows, tiny_spec):
    ids, labels, pixels = make_rows()
    with torch.no_grad():
        packed = tiny_llava(**collate(ids, labels, pixels, _packed(tiny_spec)), use_cache=False).logits[0]
        start = 0
        for row in zip(ids, labels, pixels, strict=True):
            alone = tiny_llava(**collate(*([x] for x in row), tiny_spec), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + len(alone)], alone, rtol=0, atol=1e-12)
            start += len(alone)


def test_no_attention_across_samples(tiny_llava, make_rows, tiny_spec):
    """Change every token and the image of sample 2: the other samples' logits do not move."""
    ids, labels, pixels = make_rows()
    other_ids, other_labels, other_pixels = make_rows(seed=7)
    ids2, labels2, pixels2 = list(ids), list(labels), list(pixels)
    ids2[2], labels2[2], pixels2[2] = other_ids[2], other_labels[2], other_pixels[2]
    assert ids2[2] != ids[2] and pixels2[2] != pixels[2]
    with torch.no_grad():
        a = tiny_llava(**collate(ids, labels, pixels, _packed(tiny_spec)), use_cache=False).logits[0]
        b = tiny_llava(**collate(ids2, labels2, pixels2, _packed(tiny_spec)), use_cache=False).logits[0]
    bounds = np.cumsum([0, *(sample_length(row, tiny_spec) for row in ids)])
    for k in range(len(ids)):
        part = slice(bounds[k], bounds[k + 1])
        if k == 2:
            assert not torch.allclose(a[part], b[part])
        else:
            torch.testing.assert_close(a[part], b[part], rtol=0, atol=1e-12)


def test_packed_attention_is_flex_on_gpu_only(build_tiny_llava):
    model = build_tiny_llava(torch.float32, "cpu")
    use_packed_attention(model, "cpu")
    assert model.config.text_config._attn_implementation == "sdpa"
    use_packed_attention(model, "cuda")  # only the LLM: the tower's sequences are never packed
    assert model.config.text_config._attn_implementation == "flex_attention"
    assert model.config.vision_config._attn_implementation == "sdpa"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention has no backward on CPU")
def test_flex_attention_packed_equals_padded_on_gpu(build_tiny_llava, make_rows, tiny_spec):
    """The GPU route: packed rows through flex attention against padded rows through sdpa, float32
    (tolerance 1e-4 relative: two attention kernels sum in different orders)."""
    model = build_tiny_llava(torch.float32, "cuda")
    rows = make_rows()
    ref, ref_grads = _loss_and_grads(model, collate(*rows, tiny_spec, device="cuda"))
    use_packed_attention(model, "cuda")
    packed = CollateSpec(**{**tiny_spec.__dict__, "pack_multiple": PACK_MULTIPLE})  # the recipe's row multiple
    out, grads = _loss_and_grads(model, collate(*rows, packed, device="cuda"))
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-4)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-5, msg=name)
