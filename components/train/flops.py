"""Model FLOPs per optimizer step and MFU, with the usual parameter-count approximation.

A matmul with N parameters costs 2·N FLOPs per token forward, 2·N for the gradient w.r.t. its input and 2·N
for the gradient w.r.t. its weights. So per token:
  - trained parameters: 6·N (forward + both backward halves);
  - frozen parameters the gradient still flows through (the LLM in pretraining sits between the connector
    and the loss; the frozen base of a LoRA model): 4·N;
  - frozen parameters before every trained one (the vision tower): 2·N, forward only.
The LLM and lm_head run on every non-pad token (image tokens included), the connector on image tokens, the
vision tower on (patches + 1) tokens per image. Attention's sequence-squared term and embedding lookups are
ignored (a few % at these lengths), so MFU is slightly understated. Peak: dense bf16 tensor-core TFLOP/s
from the vendor datasheets (H100/H200 SXM: 989; A100: 312); unknown devices and fp32 runs get no MFU.
"""

from __future__ import annotations

from dataclasses import dataclass

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


@dataclass(frozen=True)
class FlopCounts:
    """Parameter counts per part (from `parameter_counts`) and the vision tower's tokens per image."""

    vision: int
    connector_trained: int
    connector_frozen: int
    llm_trained: int
    llm_frozen: int
    vision_tokens_per_image: int

    def step_flops(self, llm_tokens: int, image_tokens: int, images: int) -> float:
        """FLOPs of one optimizer step over the given token counts (all ranks together)."""
        upstream_trained = self.connector_trained > 0  # gradients must flow back through the LLM to it
        llm = 6 * self.llm_trained + (4 if upstream_trained or self.llm_trained else 2) * self.llm_frozen
        connector = 6 * self.connector_trained + 2 * self.connector_frozen
        vision = 2 * self.vision * self.vision_tokens_per_image * images
        return float(llm * llm_tokens + connector * image_tokens + vision)


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of one device for `precision`, or None when unknown (no MFU is reported then)."""
    if precision != "bf16":
        return None
    for key, tflops in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if key in device_name:
            return tflops * 1e12
    return None


def mfu(step_flops: float, seconds: float, world: int, peak: float | None) -> float | None:
    """Achieved FLOP/s over the world's peak; None without a known peak."""
    if peak is None or seconds <= 0:
        return None
    return step_flops / seconds / (world * peak)
