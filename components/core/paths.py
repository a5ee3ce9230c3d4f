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
from typing import Any, TypeVar

from pydantic import BaseModel

from components.core.fields import PathKind, field_type, item_type, metadata, path_field

M = TypeVar("M", bound=BaseModel)

def _config_dir() -> Path:
    """The packaged configs/ folder: a package of its own, so a non-editable install ships it too."""
    import configs

    return Path(configs.__file__).resolve().parent


CONFIG_DIR = _config_dir()
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


_RESOLVE = {
    "path": lambda value, cwd, config_dir, key: absolute(value, cwd),
    "model": lambda value, cwd, config_dir, key: _model_path(value, cwd),
    "deepspeed": deepspeed_file,
    "sqlite": lambda value, cwd, config_dir, key: _sqlite_uri(value, cwd),
}


def locate(kind: PathKind, value: str) -> str:
    """Where a path a config holds (already resolved at load) is on this node: a packaged DeepSpeed file by
    its name in this process's copy of the configs, anything else as it is."""
    return str(find_deepspeed_file(value, Path.cwd(), CONFIG_DIR, "deepspeed")) if kind == "deepspeed" else value


def resolve_local_paths(model: M, cwd: Path, config_dir: Path, prefix: str = "") -> M:
    """The same config (any pydantic model) with every local path absolute: each field whose type is a
    `PathField` (components/core/fields.py) is resolved by its kind, in nested sections and lists too."""
    updates = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        resolved = _resolve(value, field_type(info), f"{prefix}{name}", cwd, config_dir)
        if resolved is not value:
            updates[name] = resolved
    return model.model_copy(update=updates) if updates else model


def _resolve(value: Any, annotation: Any, key: str, cwd: Path, config_dir: Path) -> Any:
    if isinstance(value, BaseModel):
        return resolve_local_paths(value, cwd, config_dir, key + ".")
    if isinstance(value, list):
        inner = item_type(annotation, mapping=False)
        items = [_resolve(v, inner, f"{key}.{i}", cwd, config_dir) for i, v in enumerate(value)]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    kind = path_field(metadata(annotation))
    if kind is None or not isinstance(value, str):
        return value
    return _RESOLVE[kind.kind](value, cwd, config_dir, key)
