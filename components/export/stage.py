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

import torch
from transformers import AutoConfig

from components.core import storage
from components.core.config import PipelineConfig
from components.core.mlflow_target import MlflowTarget
from components.core.templates import TemplateName
from components.export.chat_template import chat_template
from components.export.package import (
    CUSTOM_LOADER,
    check_connector,
    model_card,
    saved_connector_spec,
    write_model_dir,
)
from components.export.parity import PARITY_MAX_NEW_TOKENS, parity_failure, run_parity
from components.export.registry import eval_tags, read_eval_results, register_model
from components.export.samples import parity_items
from components.models.assembly import load_llava
from components.models.remote import localize
from components.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def _export_model(model_dir: str, dest: Path, *, template: TemplateName, card: str) -> list[str]:
    """Load the finetuned model in its saved dtype and write the transformers folder to local `dest`."""
    dtype = AutoConfig.from_pretrained(localize(model_dir)).dtype
    model = load_llava(model_dir, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
    tokenizer = load_tokenizer(model_dir)
    if dest.exists():  # a failed earlier attempt at this fingerprint: no stale shards may survive
        shutil.rmtree(dest)
    files = write_model_dir(model, tokenizer, dest, template=template, card=card)
    del model
    gc.collect()
    return files


def _questions_root(cfg: PipelineConfig, eval_root: str | None) -> str | None:
    """Where the benchmark folders are, if this stage can know it ({synth} is another stage's output)."""
    if eval_root is not None:
        return eval_root
    return None if "{synth}" in cfg.evaluate.root else cfg.evaluate.root


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_export(
    cfg: PipelineConfig,
    *,
    model_dir: str,
    out: str,
    eval_outputs: dict[str, str],
    pipeline_fingerprint: str,
    mlflow: MlflowTarget | None,
    eval_root: str | None = None,
    parity_max_new_tokens: int = PARITY_MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """Export `model_dir` to `out/model`, check parity, register it; returns the stage metrics.

    `eval_outputs` maps evaluate stage names to their output folders (metrics.json → registry tags,
    questions → parity prompts). `eval_root` is the folder holding the benchmark folders; without it,
    evaluate.root is used when it does not refer to another stage's output. `parity_max_new_tokens` caps
    each parity answer.
    """
    spec = saved_connector_spec(model_dir)
    custom = check_connector(spec, cfg)
    template = cfg.evaluate.template
    chat_template(template)  # fails now, before any weights are read, for a template without one
    results = read_eval_results(eval_outputs)
    tags = eval_tags(results)
    name = cfg.export.registered_model_name or cfg.name
    card = model_card(name=name, spec=spec, custom=custom, fingerprint=pipeline_fingerprint, eval_tags=tags)

    remote = storage.is_remote(out)
    tmp = tempfile.TemporaryDirectory(prefix="llava-export-") if remote else None
    local = Path(tmp.name) if tmp is not None else Path(out)
    try:
        local.mkdir(parents=True, exist_ok=True)
        files = _export_model(model_dir, local / "model", template=template, card=card)
        items = parity_items(eval_outputs, cfg.export.parity_sample, eval_root=_questions_root(cfg, eval_root))
        report = run_parity(model_dir, str(local / "model"), items, template=template, custom_connector=custom,
                            max_new_tokens=parity_max_new_tokens)
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
                "pipeline": cfg.name,
                "mm_projector_type": spec,
                "loader": summary["loader"],
                "parity_checked": str(report["n_checked"]),
                "parity_ok": str(report["ok"]),
                "export_path": summary["model"],
            }
            version = register_model(mlflow, name=name, local_dir=str(local / "model"), tags=version_tags,
                                     as_pyfunc=not custom,
                                     description=f"Exported from {model_dir} by pipeline {cfg.name} "
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
