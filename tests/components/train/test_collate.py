"""Collation: image-token expansion, truncation, right padding, masks, and pixel rows only for images."""

import numpy as np
import pytest
import torch

from components.core.images import normalize
from components.core.tokenize import IGNORE_INDEX
from components.train.collate import CollateSpec, collate, sample_length

IMG, PAD, N_IMG, SIZE = 50, 0, 4, 8
SPEC = CollateSpec(image_id=IMG, num_image_tokens=N_IMG, max_length=32, pad_id=PAD, image_size=SIZE)


def pix(value):
    return np.full((3, SIZE, SIZE), value, np.uint8).tobytes()


def test_pads_expands_and_masks():
    ids = [[1, IMG, 7, 8, 9], [1, 5, 6]]
    labels = [[IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, 6]]
    out = collate(ids, labels, [pix(10), None], SPEC)
    assert out["input_ids"].shape == (2, 1 + N_IMG + 3)
    assert out["input_ids"][0].tolist() == [1, IMG, IMG, IMG, IMG, 7, 8, 9]
    assert out["labels"][0].tolist() == [IGNORE_INDEX] * (1 + N_IMG) + [7, 8, 9]
    assert out["input_ids"][1].tolist() == [1, 5, 6] + [PAD] * 5
    assert out["labels"][1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 6] + [IGNORE_INDEX] * 5
    assert out["attention_mask"].tolist() == [[1] * 8, [1] * 3 + [0] * 5]
    # one image row → one image; transformers' Llava matches image blocks to images
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE)
    expected = normalize(torch.full((3, SIZE, SIZE), 10, dtype=torch.uint8))
    assert torch.equal(out["pixel_values"][0], expected)
    assert out["input_ids"].dtype == torch.long


def test_all_text_batch_has_no_pixels():
    out = collate([[1, 5], [1, 6, 7]], [[-100, 5], [-100, 6, 7]], [None, None], SPEC)
    assert out["pixel_values"] is None
    assert out["attention_mask"].sum().item() == 5


def test_ensure_image_adds_a_masked_blank_block():
    ids, labels = [[1, 5], [1, 6, 7]], [[-100, 5], [-100, 6, 7]]
    plain = collate(ids, labels, [None, None], SPEC)
    out = collate(ids, labels, [None, None], SPEC, ensure_image=True)
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE)
    assert out["input_ids"][0].tolist() == [1, 5] + [IMG] * N_IMG
    assert (out["input_ids"] == IMG).sum().item() == N_IMG
    # nothing attends to the block and nothing is learned from it
    assert torch.equal(out["attention_mask"].sum(1), plain["attention_mask"].sum(1))
    assert (out["labels"] != IGNORE_INDEX).sum() == (plain["labels"] != IGNORE_INDEX).sum()
    # a batch that has an image is left alone
    with_image = collate([[1, IMG, 5]], [[-100, -100, 5]], [pix(1)], SPEC, ensure_image=True)
    assert with_image["pixel_values"].shape[0] == 1 and with_image["input_ids"].shape == (1, 2 + N_IMG)


def test_truncates_to_max_length():
    spec = CollateSpec(image_id=IMG, num_image_tokens=N_IMG, max_length=7, pad_id=PAD, image_size=SIZE)
    out = collate([[1, IMG, 2, 3, 4, 5]], [[-100, -100, 2, 3, 4, 5]], [pix(0)], spec)
    assert out["input_ids"][0].tolist() == [1, IMG, IMG, IMG, IMG, 2, 3]


def test_errors_name_the_row():
    with pytest.raises(ValueError, match="r7: .*cut into the 4 image tokens"):
        spec = CollateSpec(image_id=IMG, num_image_tokens=N_IMG, max_length=3, pad_id=PAD, image_size=SIZE)
        collate([[1, IMG, 2]], [[-100, -100, 2]], [pix(0)], spec, names=["r7"])
    with pytest.raises(ValueError, match="r1: 0 <image> ids but an image"):
        collate([[1, 2]], [[-100, 2]], [pix(0)], SPEC, names=["r1"])
    with pytest.raises(ValueError, match="r2: 1 <image> ids but no image"):
        collate([[1, IMG, 2]], [[-100, -100, 2]], [None], SPEC, names=["r2"])
    with pytest.raises(ValueError, match="r3: 10 pixel bytes"):
        collate([[1, IMG, 2]], [[-100, -100, 2]], [b"0" * 10], SPEC, names=["r3"])
    with pytest.raises(ValueError, match="r4: 3 input_ids but 2 labels"):
        collate([[1, 2, 3]], [[-100, 2]], [None], SPEC, names=["r4"])


def test_sample_length_counts_expanded_truncated_tokens():
    assert sample_length([1, IMG, 7, 8], SPEC) == 3 + N_IMG
    assert sample_length([1, 5, 6], SPEC) == 3
    assert sample_length(list(range(60, 100)), SPEC) == SPEC.max_length


def test_packed_layout_restarts_positions_and_masks_boundaries():
    spec = CollateSpec(**{**SPEC.__dict__, "pack_multiple": 8})
    # row 1's first label is a real token: packed, the previous sample's last token must not learn it
    ids, labels = [[1, IMG, 7, 8], [5, 6, 9]], [[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [5, 6, 9]]
    out = collate(ids, labels, [pix(3), None], spec)
    n0 = 3 + N_IMG
    assert set(out) == {"input_ids", "position_ids", "labels", "pixel_values"}
    assert out["input_ids"].shape == (1, 16)  # 10 real tokens, padded to a multiple of 8
    assert out["input_ids"][0].tolist() == [1, IMG, IMG, IMG, IMG, 7, 8, 5, 6, 9] + [PAD] * 6
    assert out["position_ids"][0].tolist() == [*range(n0), *range(3), *range(6)]
    assert out["labels"][0].tolist() == [IGNORE_INDEX] * (1 + N_IMG) + [7, 8, IGNORE_INDEX, 6, 9] + [IGNORE_INDEX] * 6
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE)
    # a length already on the multiple gets no tail
    assert collate([[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 3, 4]] * 2, [None, None], spec)["input_ids"].shape == (1, 8)


def test_packed_images_follow_sample_order_and_blank_block_stands_alone():
    spec = CollateSpec(**{**SPEC.__dict__, "pack_multiple": 4})
    out = collate([[1, IMG, 2], [1, 3], [1, IMG, 4]], [[-100, -100, 2], [-100, 3], [-100, -100, 4]],
                  [pix(10), None, pix(20)], spec)
    assert torch.equal(out["pixel_values"], normalize(torch.tensor(np.stack(
        [np.frombuffer(pix(10), np.uint8), np.frombuffer(pix(20), np.uint8)]).reshape(2, 3, SIZE, SIZE))))
    text = collate([[1, 5], [1, 6, 7]], [[-100, 5], [-100, 6, 7]], [None, None], spec, ensure_image=True)
    assert text["input_ids"][0, :5 + N_IMG].tolist() == [1, 5, 1, 6, 7] + [IMG] * N_IMG
    assert text["position_ids"][0, 5:5 + N_IMG].tolist() == list(range(N_IMG))  # its own document
    assert (text["labels"][0, 5:] == IGNORE_INDEX).all() and text["pixel_values"].shape[0] == 1
