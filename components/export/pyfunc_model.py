"""The MLflow pyfunc of an exported model: rows of (question, image) → greedy answers, with plain transformers.

Logged by the export stage as a "model from code" file, so `mlflow.pyfunc.load_model("models:/NAME/N")`
and `mlflow models serve` need mlflow, torch, transformers and Pillow, not llava-pipeline. Input: a table with
a `question` column (text) and an optional `image` column (encoded image bytes, or the same base64-encoded;
empty for a text-only question). Params: `max_new_tokens` (default: the model's generation config).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import mlflow
import torch
from PIL import Image


def _image(value: Any) -> Image.Image | None:
    if value is None or (isinstance(value, float) and value != value) or (hasattr(value, "__len__") and not len(value)):
        return None  # absent: a text-only question (NaN is pandas' missing value)
    data = base64.b64decode(value) if isinstance(value, str) else bytes(value)
    return Image.open(io.BytesIO(data)).convert("RGB")


class LlavaChat(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        path = context.artifacts["model_dir"]
        # The PIL backend: bicubic resizes exactly as the pipeline trained and evaluated (see parity.py).
        self.processor = AutoProcessor.from_pretrained(path, backend="pil")
        self.model = LlavaForConditionalGeneration.from_pretrained(path).eval()

    # No type hints here: MLflow would read them as the input schema; the logged signature says it instead.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        kwargs = {"max_new_tokens": int(params["max_new_tokens"])} if params and params.get("max_new_tokens") else {}
        answers = []
        for row in model_input.to_dict("records"):
            image = _image(row.get("image"))
            content = [{"type": "image", "image": image}] if image is not None else []
            messages = [{"role": "user", "content": [*content, {"type": "text", "text": str(row["question"])}]}]
            inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True, return_tensors="pt")
            inputs = inputs.to(dtype=self.model.dtype)  # casts the pixels only
            with torch.inference_mode():
                out = self.model.generate(**inputs, **kwargs)  # greedy: the exported generation config
            n_prompt = inputs["input_ids"].shape[1]
            answers.append(self.processor.decode(out[0, n_prompt:], skip_special_tokens=True).strip())
        return answers


mlflow.models.set_model(LlavaChat())
