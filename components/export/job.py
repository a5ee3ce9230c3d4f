"""The export's heavy part: finetuned model → transformers folder → parity check → files and MLflow registry.

Plain Python, no Ray: the stage (stage.py) runs `export_model` as a Ray task with the resources the model's
size needs, never in the job's driver: a 7B model is ~14 GB in bf16, and its parity check in fp32 on a CPU
~28 GB, more than the head node has. Whatever it reads it reads by its storage name on its own node (the
model folder and benchmark folders are localized here, evaluation outputs read from storage); whatever it
writes goes to `out` (local or s3://) and to MLflow, so nothing that scales with the model passes through
the driver. The registered model is logged from here, where the folder was written.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.mlflow_target import MlflowTarget
from components.core.templates import TemplateName

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    """What the model version is registered as; `tags` gets the parity outcome added where it is known."""

    name: str
    tags: dict[str, str]
    description: str
    as_pyfunc: bool  # an MLflow pyfunc model; False for a connector plain transformers cannot load


@dataclass(frozen=True)
class ExportJob:
    """Everything the export needs, resolved by the driver from the stage's arguments: plain data, and paths
    by their storage names (readable from any node of the cluster)."""

    model_dir: str
    out: str  # the stage's output folder (local or s3://)
    template: TemplateName  # our evaluation path's prompt template
    chat_template: str  # the Jinja text the folder ships (the driver resolved `template` before any weights)
    card: str  # README.md of the folder
    custom_connector: bool
    evaluations: dict[str, str]  # benchmark → evaluation output folder
    benchmark_folders: dict[str, str]  # benchmark → folder of questions
    parity_sample: int
    parity_max_new_tokens: int
    summary: dict[str, Any]  # export.json's fields known before the work
    registration: Registration
    mlflow: MlflowTarget | None
    use_gpu: bool
    cpus: float


def _write_folder(job: ExportJob, dest: Path) -> list[str]:
    """Load the finetuned model in its saved dtype and write the transformers folder to local `dest`."""
    import torch
    from transformers import AutoConfig

    from components.export.package import write_model_dir
    from components.models.assembly import load_llava
    from components.models.remote import localize
    from components.models.tokenizer import load_tokenizer

    dtype = AutoConfig.from_pretrained(localize(job.model_dir)).dtype
    model = load_llava(job.model_dir, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
    tokenizer = load_tokenizer(job.model_dir)
    if dest.exists():  # a failed earlier attempt at this fingerprint: no stale shards may survive
        shutil.rmtree(dest)
    files = write_model_dir(model, tokenizer, dest, chat_template=job.chat_template, card=job.card)
    del model
    gc.collect()
    return files


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _log_parity(mlflow: MlflowTarget, report: dict[str, Any], parity_file: Path, summary: dict[str, Any]) -> None:
    metrics = {"parity_checked": float(report["n_checked"])}
    if report["ok"] is not None:
        metrics["parity_ok"] = float(report["ok"])
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(parity_file), "export")
    mlflow.set_tags({"export.model": summary["model"], "export.mm_projector_type": summary["mm_projector_type"]})


def export_model(job: ExportJob) -> dict[str, Any]:
    """Do `job` here; returns {"report": the parity report, "summary": export.json, "version": the registered
    version or None}. A parity mismatch is returned, not raised (the caller fails the stage with the report):
    parity.json is written and logged by then, and nothing is registered."""
    import torch

    from components.export.parity import run_parity
    from components.export.registry import register_model
    from components.export.samples import parity_items

    if not job.use_gpu:
        # As many torch threads as the CPUs Ray reserved: more spin against each other on a shared node.
        torch.set_num_threads(max(1, round(job.cpus)))
    out = job.out
    remote = storage.is_remote(out)
    tmp = tempfile.TemporaryDirectory(prefix="llava-export-") if remote else None
    local = Path(tmp.name) if tmp is not None else Path(out)
    try:
        local.mkdir(parents=True, exist_ok=True)
        files = _write_folder(job, local / "model")
        items = parity_items(job.evaluations, job.parity_sample, benchmark_folders=job.benchmark_folders)
        report = run_parity(job.model_dir, str(local / "model"), items, template=job.template,
                            custom_connector=job.custom_connector, device="cuda" if job.use_gpu else "cpu",
                            max_new_tokens=job.parity_max_new_tokens)
        if not items:
            report["ok"] = None  # export.parity_sample: 0 — nothing was checked
        (local / "parity.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
        summary = {**job.summary, "files": files, "bytes": _dir_bytes(local / "model"), "parity_ok": report["ok"]}
        (local / "export.json").write_text(json.dumps(summary, indent=2))
        if remote:
            storage.upload_dir(str(local), out)
        if job.mlflow is not None:
            _log_parity(job.mlflow, report, local / "parity.json", summary)
        version = None
        if report["ok"] is not False and job.mlflow is not None:
            reg = job.registration
            tags = {**reg.tags, "parity_checked": str(report["n_checked"]), "parity_ok": str(report["ok"])}
            version = register_model(job.mlflow, name=reg.name, local_dir=str(local / "model"), tags=tags,
                                     as_pyfunc=reg.as_pyfunc, description=reg.description)
            log.info("export: registered %s version %s", reg.name, version)
    finally:
        if tmp is not None:
            tmp.cleanup()
    # Prompts, answers and flags per item (no pixels, no weights): small, and the driver names each difference.
    return {"report": report, "summary": summary, "version": version}
