"""The export stage: finetuned model → plain transformers folder → parity check → MLflow Model Registry.

Writes under `out/`: `model/` (the LlavaForConditionalGeneration folder, see package.py), `parity.json`
(every parity prompt with both answers) and `export.json` (what was exported and where it is registered).
A remote `out` (s3://…) is written to a local temporary folder first, then uploaded. A parity mismatch
fails the stage after parity.json is written and logged, and nothing is registered.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.fields import DataFile
from components.core.stage_run import StageRun
from components.core.templates import TemplateName

log = logging.getLogger(__name__)


def _export_model(model_dir: str, dest: Path, *, template: TemplateName, card: str) -> list[str]:
    """Load the finetuned model in its saved dtype and write the transformers folder to local `dest`."""
    import torch
    from transformers import AutoConfig

    from components.export.package import write_model_dir
    from components.models.assembly import load_llava
    from components.models.remote import localize
    from components.models.tokenizer import load_tokenizer

    dtype = AutoConfig.from_pretrained(localize(model_dir)).dtype
    model = load_llava(model_dir, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
    tokenizer = load_tokenizer(model_dir)
    if dest.exists():  # a failed earlier attempt at this fingerprint: no stale shards may survive
        shutil.rmtree(dest)
    files = write_model_dir(model, tokenizer, dest, template=template, card=card)
    del model
    gc.collect()
    return files


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_export(
    *,
    model: str,
    evaluations: dict[str, str],
    benchmark_folders: dict[str, DataFile],
    template: TemplateName,
    parity_sample: int,
    allow_custom_connector: bool,
    registered_name: str,
    pipeline: str,
    run: StageRun,
    parity_max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Export the finetuned `model` to `out/model`, check parity, register it; returns the stage metrics.

    `evaluations` maps each evaluated benchmark to its evaluation output (metrics.json → registry tags;
    answers → parity prompts), `benchmark_folders` to its folder of questions (parity prompts with their
    images). `parity_sample` questions are answered by plain transformers and by our path and must match;
    `parity_max_new_tokens` caps each answer (default: PARITY_MAX_NEW_TOKENS). The model is registered as
    `registered_name`, tagged with the `pipeline` and this stage's fingerprint.
    """
    from components.export.chat_template import chat_template
    from components.export.package import CUSTOM_LOADER, check_connector, model_card, saved_connector_spec
    from components.export.parity import PARITY_MAX_NEW_TOKENS, parity_failure, run_parity
    from components.export.registry import eval_tags, read_eval_results, register_model
    from components.export.samples import parity_items

    model_dir, out, mlflow, pipeline_fingerprint, name = model, run.out, run.mlflow, run.fingerprint, registered_name
    spec = saved_connector_spec(model_dir)
    custom = check_connector(spec, allow_custom_connector)
    chat_template(template)  # fails now, before any weights are read, for a template without one
    results = read_eval_results(evaluations)
    tags = eval_tags(results)
    card = model_card(name=name, spec=spec, custom=custom, fingerprint=pipeline_fingerprint, eval_tags=tags)

    remote = storage.is_remote(out)
    tmp = tempfile.TemporaryDirectory(prefix="llava-export-") if remote else None
    local = Path(tmp.name) if tmp is not None else Path(out)
    try:
        local.mkdir(parents=True, exist_ok=True)
        files = _export_model(model_dir, local / "model", template=template, card=card)
        items = parity_items(evaluations, parity_sample, benchmark_folders=dict(benchmark_folders))
        report = run_parity(model_dir, str(local / "model"), items, template=template, custom_connector=custom,
                            max_new_tokens=parity_max_new_tokens or PARITY_MAX_NEW_TOKENS)
        if not items:
            report["ok"] = None  # export.parity_sample: 0 — nothing was checked
        (local / "parity.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
        summary = {
            "model": storage.join(out, "model"),
            "registered_model": name,
            "mm_projector_type": spec,
            "loader": CUSTOM_LOADER if custom else "transformers",
            "pipeline_fingerprint": pipeline_fingerprint,
            "source_model_dir": model_dir,
            "files": files,
            "bytes": _dir_bytes(local / "model"),
            "eval_tags": tags,
            "parity_ok": report["ok"],
        }
        (local / "export.json").write_text(json.dumps(summary, indent=2))
        if remote:
            storage.upload_dir(str(local), out)
        if mlflow is not None:
            parity_metrics = {"parity_checked": float(report["n_checked"])}
            if report["ok"] is not None:
                parity_metrics["parity_ok"] = float(report["ok"])
            mlflow.log_metrics(parity_metrics)
            mlflow.log_artifact(str(local / "parity.json"), "export")
            mlflow.set_tags({"export.model": summary["model"], "export.mm_projector_type": spec})
        if report["ok"] is False:
            raise parity_failure(report, storage.join(out, "parity.json"))

        version = None
        if mlflow is not None:
            version_tags = {
                **tags,
                "pipeline_fingerprint": pipeline_fingerprint,
                "pipeline": pipeline,
                "mm_projector_type": spec,
                "loader": summary["loader"],
                "parity_checked": str(report["n_checked"]),
                "parity_ok": str(report["ok"]),
                "export_path": summary["model"],
            }
            version = register_model(mlflow, name=name, local_dir=str(local / "model"), tags=version_tags,
                                     as_pyfunc=not custom,
                                     description=f"Exported from {model_dir} by pipeline {pipeline} "
                                                 f"(fingerprint {pipeline_fingerprint}).")
            log.info("export: registered %s version %s", name, version)
    finally:
        if tmp is not None:
            tmp.cleanup()

    metrics: dict[str, Any] = {
        "parity_checked": report["n_checked"],
        "parity_mismatches": report["n_mismatches"],
        "registered_model": name,
        "registered_version": version,
        "registry": "registered" if version is not None else "skipped: no MLflow tracking",
        "custom_connector": custom,
        "model_mb": round(summary["bytes"] / 2**20, 3),
    }
    if report["ok"] is not None:
        metrics["parity_ok"] = report["ok"]
    return metrics
