"""The `export:` section: whether the finetuned model is exported and registered, and how it is checked."""

from __future__ import annotations

from components.core.config import Strict


class ExportConfig(Strict):
    enabled: bool = True
    registered_model_name: str | None = None  # MLflow Model Registry name (default: the config name)
    parity_sample: int = 8  # questions answered by plain transformers and by our path; must match
    allow_custom_connector: bool = False  # export non-transformers connectors (needs our loader)
