"""The training loss: next-token cross-entropy over the supervised positions only.

transformers' Llava runs lm_head on every position and upcasts all (B, L, vocab) logits to fp32 before its
loss; in LLaVA most positions are context (576 image tokens, the system prompt, the questions) whose logits
are thrown away. Here the model gets `logits_to_keep`, the positions whose next token is supervised in some
row (exactly the supervised ones in a packed batch, which has one row), so lm_head and the fp32 upcast run on
those alone. The value is transformers' loss: the mean over the same (position, target) pairs, in fp32.
A 1-D index tensor is the form every transformers 5 release takes (a boolean mask needs 5.2x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from components.core.tokenize import IGNORE_INDEX


def supervised_loss(model: Callable[..., Any], inputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """Mean cross-entropy of `model` (a Llava, or a DeepSpeed engine / PEFT model around one) on `inputs`
    (collate's output, labels included) over the positions whose next token has a label."""
    labels = inputs["labels"]
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # position p predicts token p + 1
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    features = {k: v for k, v in inputs.items() if k != "labels"}
    if not len(keep):  # nothing supervised (every sample's image was lost): a zero loss that still runs the
        # forward and backward, which every rank must do together under ZeRO
        return model(**features, logits_to_keep=1, use_cache=False).logits.float().sum() * 0.0
    logits = model(**features, logits_to_keep=keep, use_cache=False).logits  # (B, kept positions, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets[:, keep].flatten(), ignore_index=IGNORE_INDEX)
