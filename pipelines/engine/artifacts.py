"""Finding stage outputs under the storage root: `{storage}/artifacts/{stage}/{fingerprint}/`."""

from __future__ import annotations

from components.core import storage
from components.core.config import PipelineConfig


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
    from components.prepare.stage import build_tokenizer, resolve_sources

    prepared = latest_output(cfg, "prepare")
    if prepared:
        return storage.join(prepared, "tokenizer")
    cache = storage.join(storage_root(cfg), "cache", "inspect")
    tok_dir = storage.join(cache, "tokenizer")
    if storage.exists(storage.join(tok_dir, "tokenizer_config.json")):
        return tok_dir
    synth_root = None
    if cfg.data.synth is not None:
        from components.synth.world import generate_world

        synth_root = storage.join(cache, "synth")
        generate_world(synth_root, seed=cfg.data.synth.seed, size=cfg.data.synth.size)
    sources = resolve_sources(cfg.data.pretrain + cfg.data.finetune, synth_root)
    return build_tokenizer(cfg, sources, tok_dir)
