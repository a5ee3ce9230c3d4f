"""Configs as YAML, validated by pydantic: the generic loader (`extends:`, `--set` overrides, errors that name
the file and the key path, local paths resolved by their field types).

The schema itself lives with its users: each stage's section type in `components/<stage>/spec.py`, the
whole pipeline's in `pipelines/config.py`. Errors read `finetune.optim.lr: expected a number, got 'fast'`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .paths import CONFIG_DIR, PathError, resolve_local_paths

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (file, key path, what was wrong)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


_EXPECTED = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
}


def _blame(source: str, path: str, overrides: Sequence[str]) -> str:
    """Where a key's value came from: the `--set` that wrote it (or below it), else the config file."""
    for item in reversed(overrides):
        key = item.split("=", 1)[0].strip()
        if path and (key == path or key.startswith(path + ".") or path.startswith(key + ".")):
            return f"--set {item}"
    return source


def _format_errors(source: str, err: ValidationError, overrides: Sequence[str] = (), prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        path = ".".join([*([prefix] if prefix else []), *(str(p) for p in e["loc"] if not str(p).startswith("function-"))])
        source_of = _blame(source, path, overrides)
        kind = e["type"]
        if kind in ("missing", "extra_forbidden"):
            lines.append(f"{source_of}: {path}: {_EXPECTED[kind]}")
        elif kind in _EXPECTED:
            lines.append(f"{source_of}: {path}: {_EXPECTED[kind]}, got {_describe(e['input'])}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source_of}: {path or '(top level)'}: {msg}")
    return "\n".join(lines)


def _parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars: 1e-5, true, null, [a, b] all mean what they look like."""
    value = yaml.safe_load(text) if text else ""
    # YAML 1.1 reads "1e-5" as a string; a user typing a number means a number.
    if isinstance(value, str):
        try:
            f = float(value)
            if math.isfinite(f):
                return f
        except ValueError:
            pass
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides to a raw config mapping (a copy)."""
    out = yaml.safe_load(yaml.safe_dump(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text)
    return out


def _yaml_floats(node: Any) -> Any:
    """YAML 1.1 leaves `1e-3` (no dot) a string; read such strings as the numbers they are."""
    if isinstance(node, dict):
        return {k: _yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_yaml_floats(v) for v in node]
    if isinstance(node, str):
        try:
            if any(c.isdigit() for c in node) and ("e" in node.lower()) and not node.strip().isalpha():
                return float(node)
        except ValueError:
            return node
    return node


def resolve_path(path: str | Path) -> Path:
    """A config file: a path (relative to the working directory), else a packaged config by name from any
    directory: `tiny`, `tiny.yaml` and `configs/tiny.yaml` all name configs/tiny.yaml."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    name = p.relative_to("configs") if p.parts[:1] == ("configs",) else p
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {str(path)!r} not found (looked in {Path.cwd()} and the packaged {CONFIG_DIR})")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a mapping. `extends: other.yaml` (relative to the file, or a config name) starts from
    that config and applies this file's keys on top."""
    p = resolve_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    raw = _yaml_floats(raw)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{p}: extends: expected a config file name, got {_describe(base)}")
    target = p.parent / base if (p.parent / base).exists() else base
    try:
        base_path = resolve_path(target).resolve()
    except ConfigError as e:
        raise ConfigError(f"{p}: extends: {e}") from None
    if base_path in (*_seen, p.resolve()):
        raise ConfigError(f"{p}: extends: {base} leads back to itself")
    return _merge(load_raw(base_path, (*_seen, p.resolve())), raw)


def validate(model: type[M], raw: dict[str, Any], source: str = "<config>", overrides: Sequence[str] = ()) -> M:
    """`raw` as a `model`; an error at a key an override set is blamed on that `--set`, not the file."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e, overrides)) from None


def resolve_paths(cfg: M, source: str, cwd: Path | None = None) -> M:
    """`cfg` with its local paths absolute, against `cwd` (default: the working directory); see paths.py."""
    try:
        return resolve_local_paths(cfg, (cwd or Path.cwd()).resolve(), CONFIG_DIR)
    except PathError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_section(path: str | Path, key: str, kind: Any, overrides: Sequence[str] = (), *,
                 default: Any = None, cwd: Path | None = None) -> Any:
    """One section (or value) of a config file as `kind`, validated and with its paths resolved, for a tool
    that needs a part of a config, not the whole pipeline (the training recipe run by torchrun)."""
    p = resolve_path(path)
    raw = apply_overrides(load_raw(p), list(overrides))
    if key not in raw:
        if default is None:
            raise ConfigError(f"{p}: {key}: required key is missing")
        return default
    try:
        value = TypeAdapter(kind).validate_python(raw[key])
    except ValidationError as e:
        raise ConfigError(_format_errors(str(p), e, overrides, prefix=key)) from None
    return resolve_paths(value, str(p), cwd) if isinstance(value, BaseModel) else value
