"""Finding stage outputs under the storage root: `{storage}/artifacts/{stage}/{fingerprint}/`."""

from __future__ import annotations

from components.core import storage
from pipelines.config import PipelineConfig


def storage_root(cfg: PipelineConfig) -> str:
    return cfg.storage.replace("{name}", cfg.name)


def latest_output(cfg: PipelineConfig, stage: str) -> str | None:
    """The output folder of a stage's most recently committed run, if any."""
    from .executor import artifact_dir, latest_manifest

    root = storage_root(cfg)
    manifest = latest_manifest(root, stage)
    return artifact_dir(root, stage, manifest["fingerprint"]) if manifest else None


def local_tokenizer(cfg: PipelineConfig) -> str:
    """The locally trained tokenizer of a config: from its latest prepare output, or trained now on the
    config's corpus (generating the synthetic world first when the config uses it)."""
    from components.core.fingerprint import OutputPath
    from components.prepare.stage import build_tokenizer
    from pipelines.llava15 import prepare_args

    prepared = latest_output(cfg, "prepare")
    if prepared:
        return storage.join(prepared, "tokenizer")
    cache = storage.join(storage_root(cfg), "cache", "inspect")
    tok_dir = storage.join(cache, "tokenizer")
    if storage.exists(storage.join(tok_dir, "tokenizer_config.json")):
        return tok_dir
    up = {}
    if cfg.data.synth is not None:
        from components.synth.world import generate_world

        up["synth"] = OutputPath(storage.join(cache, "synth"), "synth")
        generate_world(up["synth"], seed=cfg.data.synth.seed, size=cfg.data.synth.size)
    datasets = prepare_args(cfg, up)["datasets"]
    return build_tokenizer(cfg.model.tokenizer, [s for d in datasets.values() for s in d.sources], tok_dir)
