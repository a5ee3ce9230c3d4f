"""What the export stage holds: the finetuned model, loaded to write the transformers folder and again for the
parity check, one model in memory at a time (stage.py, parity.py).

On a GPU worker (`export.use_gpu`) the folder is written from the model loaded in its saved dtype on the host,
and parity runs in 16-bit on the GPU; without one, parity runs in fp32 on the CPU: 4 bytes per parameter in
host memory (28 GB for 7B, 53 GB for 13B). Written: the folder in the saved dtype, and its copy in the MLflow
pyfunc model (registry.py: the folder is the pyfunc model's artifact).
"""

from __future__ import annotations

from components.models.sizes import ModelSizes

PARITY_TOKENS = 1024  # one parity prompt at batch 1: the image block, the question and its answer


def export_bytes(sizes: ModelSizes, *, use_gpu: bool, saved_dtype_bytes: int) -> dict[str, int]:
    """host: peak host memory of the export process; gpu: on its GPU; folder: the exported model's bytes."""
    folder = sizes.total * saved_dtype_bytes
    kv = PARITY_TOKENS * sizes.layers * 2 * sizes.kv_heads * (sizes.hidden // sizes.heads)
    if use_gpu:
        return {"host": folder, "gpu": sizes.total * 2 + 2 * kv, "folder": folder}
    return {"host": max(folder, sizes.total * 4 + 4 * kv), "gpu": 0, "folder": folder}
