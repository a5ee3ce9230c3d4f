"""Evaluation results → model-version tags, and registration of the export in the MLflow Model Registry.

The exported folder is logged as artifacts of the export stage's run, and a model version is created
from `runs:/<run_id>/<artifact path>`, tagged with each benchmark's headline metric and the pipeline
fingerprint, so a registry entry says which pipeline produced it and what it scored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from components.core import storage
from components.core.mlflow_target import MlflowTarget

ARTIFACT_PATH = "model"
_TAG_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")


def read_eval_results(eval_outputs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Benchmark name → its metrics.json, for each evaluation output (benchmark name → folder) that has one.

    The evaluate stage writes `<out>/<benchmark>/metrics.json`; a metrics.json directly in the folder is
    read too. Folders without one are left out (the benchmark did not finish there).
    """
    results: dict[str, dict[str, Any]] = {}
    for bench, folder in sorted(eval_outputs.items()):
        for path in (storage.join(folder, bench, "metrics.json"), storage.join(folder, "metrics.json")):
            if not storage.exists(path):
                continue
            try:
                result = json.loads(storage.read_bytes(path))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(result, dict):
                raise ValueError(f"{path}: expected a JSON object, got {type(result).__name__}")
            results[bench] = result
            break
    return results


def _tag_key(*parts: str) -> str:
    return _TAG_BAD_CHARS.sub("_", ".".join(parts))


def eval_tags(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """`eval.<bench>.<metric>` = headline value and `eval.<bench>.status`, per benchmark."""
    tags: dict[str, str] = {}
    for bench, r in sorted(results.items()):
        value = r.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            tags[_tag_key("eval", bench, str(r.get("metric") or "value"))] = repr(float(value))
        tags[_tag_key("eval", bench, "status")] = str(r.get("status", "ok"))
    return tags


def save_pyfunc(local_dir: str, dest: str) -> None:
    """An MLflow pyfunc model at `dest` wrapping the exported folder (see pyfunc_model.py): loadable and servable
    by MLflow itself. Requirements are given, not inferred (inference would load the model in a subprocess)."""
    import importlib.metadata as md

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from components.export import pyfunc_model

    requirements = [f"{pkg}=={md.version(pkg)}" for pkg in ("mlflow", "torch", "transformers", "pillow", "pandas")]
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "question"), ColSpec("binary", "image", required=False)]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 0)]))  # 0: the model's generation config
    mlflow.pyfunc.save_model(dest, python_model=pyfunc_model.__file__, artifacts={"model_dir": local_dir},
                             pip_requirements=requirements, signature=signature)


def register_model(
    target: MlflowTarget, *, name: str, local_dir: str, tags: dict[str, str], description: str,
    as_pyfunc: bool = True,
) -> int:
    """Log `local_dir` to the run and register it as a new version of model `name`; returns the version.

    `as_pyfunc`: logged as an MLflow pyfunc model (MLmodel + the folder as its artifact), so
    `mlflow.pyfunc.load_model("models:/NAME/N")` answers questions; otherwise (a connector plain transformers
    cannot load) the plain folder."""
    import tempfile

    from mlflow.exceptions import MlflowException

    client = target.client()
    if as_pyfunc:
        with tempfile.TemporaryDirectory(prefix="llava-pyfunc-") as tmp:
            save_pyfunc(local_dir, f"{tmp}/{ARTIFACT_PATH}")
            client.log_artifacts(target.run_id, f"{tmp}/{ARTIFACT_PATH}", ARTIFACT_PATH)
    else:
        client.log_artifacts(target.run_id, local_dir, ARTIFACT_PATH)
    try:
        client.create_registered_model(name, description="LLaVA-1.5-style models exported by llava-pipeline")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=f"runs:/{target.run_id}/{ARTIFACT_PATH}", run_id=target.run_id, tags=tags,
        description=description,
    )
    return int(version.version)
