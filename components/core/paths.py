"""Local paths in a config mean what the user meant: resolved once, in the driver, at config load.

A relative path is relative to the working directory where the command was typed. Ray workers and Ray jobs
run elsewhere (another working directory, another node), so nothing relative may reach them: every local
path is made absolute here, before anything is fingerprinted or shipped. URLs (`s3://…`) and `{synth}/…`
(filled from the synth stage's output folder) are left as they are; a model `name_or_path` that is not a
local path is a Hugging Face Hub name and stays one. So `./runs/tiny` and its absolute spelling are the same
config, and the same cache.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.core.config import PipelineConfig

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PLACEHOLDER = "{synth}"


class PathError(ValueError):
    """A local path in a config that cannot be used (named by its key path)."""


def is_url(value: str) -> bool:
    return bool(_SCHEME.match(value))


def absolute(value: str, cwd: Path) -> str:
    """`value` as an absolute, normalised local path (`~` expanded, symlinks resolved), unless it is a URL
    or starts with `{synth}`."""
    if is_url(value) or value.startswith(_PLACEHOLDER):
        return value
    return str((cwd / Path(value).expanduser()).resolve())


def _is_local_model(value: str, cwd: Path) -> bool:
    """A `name_or_path` names a local folder when it looks like a path or exists; else it is a Hub name."""
    return value.startswith((".", "/", "~")) or (cwd / value).exists()


def _model_path(value: str | None, cwd: Path) -> str | None:
    if value is None or is_url(value) or not _is_local_model(value, cwd):
        return value
    return absolute(value, cwd)


def _sqlite_uri(uri: str | None, cwd: Path) -> str | None:
    """`sqlite:///mlflow.db` is relative to the process's directory: make it absolute for every process."""
    if uri is None or not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
        return uri
    return "sqlite:///" + absolute(uri.removeprefix("sqlite:///"), cwd)


def find_deepspeed_file(value: str, cwd: Path, config_dir: Path, key: str) -> Path:
    """A DeepSpeed JSON on this machine: a path (relative to the working directory), else a file of the
    packaged configs folder (`deepspeed/zero2.json`), the same lookup as config names."""
    for candidate in (cwd / Path(value).expanduser(), config_dir / value):
        if candidate.is_file():
            return candidate.resolve()
    raise PathError(f"{key}: DeepSpeed config {value!r} not found (looked in {cwd} and the packaged {config_dir})")


def deepspeed_file(value: str, cwd: Path, config_dir: Path, key: str) -> str:
    """What the config keeps: a local file's absolute path, or a packaged file's name under the configs
    folder. The code, packaged configs included, sits at another path on every node (a Ray job's working
    dir), so each process finds a packaged file in its own copy (`config.deepspeed_config_path`)."""
    path = find_deepspeed_file(value, cwd, config_dir, key)
    packaged = config_dir.resolve()
    if path.is_relative_to(packaged) and not (cwd / Path(value).expanduser()).is_file():
        return path.relative_to(packaged).as_posix()
    return str(path)


def resolve_local_paths(cfg: PipelineConfig, cwd: Path, config_dir: Path) -> PipelineConfig:
    """The same config with every local path absolute (see the module docstring)."""

    def sources(items: list[Any]) -> list[Any]:
        return [s.model_copy(update={"annotations": absolute(s.annotations, cwd),
                                     "image_root": None if s.image_root is None else absolute(s.image_root, cwd)})
                for s in items]

    model = cfg.model
    model = model.model_copy(update={
        "vision": model.vision.model_copy(update={"name_or_path": _model_path(model.vision.name_or_path, cwd)}),
        "llm": model.llm.model_copy(update={"name_or_path": _model_path(model.llm.name_or_path, cwd)}),
        "tokenizer": model.tokenizer.model_copy(
            update={"name_or_path": _model_path(model.tokenizer.name_or_path, cwd)}),
    })
    sweep = cfg.sweep
    space = sweep.space.model_copy(update={"resolution": [
        r.model_copy(update={"name_or_path": _model_path(r.name_or_path, cwd)}) for r in sweep.space.resolution]})
    dev = sweep.dev.model_copy(update={"root": None if sweep.dev.root is None else absolute(sweep.dev.root, cwd)})
    return cfg.model_copy(update={
        "storage": absolute(cfg.storage, cwd),
        "model": model,
        "data": cfg.data.model_copy(update={"pretrain": sources(cfg.data.pretrain),
                                            "finetune": sources(cfg.data.finetune)}),
        "pretrain": cfg.pretrain.model_copy(update={
            "deepspeed": deepspeed_file(cfg.pretrain.deepspeed, cwd, config_dir, "pretrain.deepspeed")}),
        "finetune": cfg.finetune.model_copy(update={
            "deepspeed": deepspeed_file(cfg.finetune.deepspeed, cwd, config_dir, "finetune.deepspeed")}),
        "evaluate": cfg.evaluate.model_copy(update={"root": absolute(cfg.evaluate.root, cwd),
                                                    "model": _model_path(cfg.evaluate.model, cwd)}),
        "sweep": sweep.model_copy(update={"space": space, "dev": dev}),
        "tracking": cfg.tracking.model_copy(update={"tracking_uri": _sqlite_uri(cfg.tracking.tracking_uri, cwd)}),
    })
