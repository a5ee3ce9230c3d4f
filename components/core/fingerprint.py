"""Stage fingerprints: a hash of the stage name, the config it reads, its upstream fingerprints, the data
files it reads and the code it runs. Equal fingerprint = reusable output; a different one comes with the
reasons (`explain`), so a rerun is explainable.

Nothing here is listed by hand: the code part is the import closure of the stage's body within this
project (`code_closure`), and data files are hashed by content (`path_digest`).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import posixpath
import textwrap
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from components.core import storage
from components.core.fields import (
    NOT_CONFIGURED,
    NotConfigured,
    field_type,
    is_scheduling,
    item_type,
    metadata,
    path_field,
)
from components.core.paths import locate
from components.core.redact import redact, redact_json

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "pipelines")  # this project's top-level packages: the only code a closure follows


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}; lists stay values."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


# ---------------------------------------------------------------- code: the import closure


def module_file(module: str, root: Path) -> Path | None:
    """The file of a project module (`a.b` → a/b.py or a/b/__init__.py), or None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(node: ast.AST, module: str, is_package: bool) -> set[str]:
    """Modules an AST imports (module-level and lazy ones alike); `from a import b` also names `a.b`,
    which is a module when b is one."""
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found.update(alias.name for alias in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level:  # relative: resolved against this module's package
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (n.level - 1)]
                base = ".".join([*parts, n.module] if n.module else parts)
            else:
                base = n.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in n.names)
    return found


def _with_parents(module: str) -> list[str]:
    """a.b.c → a, a.b, a.b.c: importing a module runs its packages' __init__ first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _parse(path: Path) -> ast.Module:
    st = path.stat()
    return _parse_version(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _parse_version(path: Path, size: int, mtime_ns: int) -> ast.Module:
    return ast.parse(path.read_bytes(), str(path))


@lru_cache(maxsize=4096)
def _file_imports(path: Path, module: str, size: int, mtime_ns: int) -> frozenset[str]:
    """A file's imports, parsed once per version of the file."""
    return frozenset(_imported(_parse_version(path, size, mtime_ns), module, path.name == "__init__.py"))


def import_closure(modules: Iterable[str], root: Path | None = None) -> list[Path]:
    """Every project file (under `root`, default REPO_ROOT) that importing `modules` can run, following
    imports anywhere in each file."""
    root = root or REPO_ROOT
    seen: dict[str, Path] = {}
    todo = [m for module in modules for m in _with_parents(module)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(module, root)
        if path is None:
            continue
        seen[module] = path
        st = path.stat()
        for name in _file_imports(path, module, st.st_size, st.st_mtime_ns):
            todo.extend(m for m in _with_parents(name) if m not in seen)
    return sorted(set(seen.values()))


def _function_roots(fn: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """(modules, source texts) a stage runs: its own source, the module-level functions of its module it calls
    (transitively, by name), the project modules those import, and its module itself (a `run_<stage>` lives in
    its stage's own module, whose constants and helpers are part of it). A nested function or a lambda (a test's
    stage) is its own source and what it names."""
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func  # type: ignore[attr-defined]
    module = inspect.getmodule(fn)
    assert module is not None and module.__file__ is not None
    mod_tree = _parse(Path(module.__file__))
    defs = {n.name: n for n in mod_tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    imports: dict[str, str] = {}  # name bound by a module-level import → the module it comes from
    is_package = Path(module.__file__).name == "__init__.py"
    for n in mod_tree.body:
        if isinstance(n, ast.Import | ast.ImportFrom):
            for alias in n.names:
                bound = alias.asname or alias.name.split(".")[0]
                targets = _imported(ast.Module(body=[n], type_ignores=[]), module.__name__, is_package)
                full = [t for t in targets if t.endswith("." + alias.name) or t == alias.name]
                imports[bound] = max(full, key=len) if full else alias.name
    modules: list[str] = []
    sources: list[str] = []
    todo: list[ast.AST] = []
    if fn.__qualname__ == fn.__name__ and fn.__name__ in defs:
        todo.append(defs[fn.__name__])
    else:  # a nested function or a lambda: its own source (a lambda's is the lines around it)
        text = textwrap.dedent(inspect.getsource(fn))
        sources.append(text)
        with contextlib.suppress(SyntaxError):  # a lambda cut out of a larger expression: text hashed only
            todo.append(ast.parse(text))
    done: set[str] = set()
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            sources.append(ast.unparse(node))
            # What runs: the body and default values; annotations are never evaluated (`from __future__`).
            node = ast.Module(body=[*node.body, *(ast.Expr(d) for d in node.args.defaults
                                                  + node.args.kw_defaults if d is not None)], type_ignores=[])
        modules.extend(_imported(node, module.__name__, is_package))
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                if n.id in defs and n.id not in done:
                    done.add(n.id)
                    todo.append(defs[n.id])
                elif n.id in imports:
                    modules.append(imports[n.id])
    if fn.__qualname__ == fn.__name__:
        modules.append(module.__name__)
    return sorted(set(modules)), sorted(sources)


def code_closure(body: Callable[..., Any], root: Path | None = None) -> list[Path]:
    """The project files a stage body can run (see `_function_roots`, then `import_closure`)."""
    return import_closure(_function_roots(body)[0], root)


@lru_cache(maxsize=256)
def _file_hash(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_version(body: Callable[..., Any], root: Path | None = None) -> str:
    """Hash of the body's own source and every project file in its import closure (paths and contents)."""
    root = root or REPO_ROOT
    modules, sources = _function_roots(body)
    h = hashlib.sha256()
    for text in sources:
        h.update(text.encode())
    for f in import_closure(modules, root):
        st = f.stat()
        h.update(str(f.relative_to(root)).encode())
        h.update(_file_hash(f, st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- data files


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llava-pipeline" / "digests.json"


def _local_digest(path: Path, cache: dict[str, Any]) -> str:
    """sha256 of a local file's content, computed once per version (size, mtime) of the file: `cache` maps
    each path to its last version's digest."""
    st = path.stat()
    key, version = str(path.resolve()), [st.st_size, st.st_mtime_ns]
    known = cache.get(key)
    if isinstance(known, dict) and known.get("version") == version:
        return str(known["digest"])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = "sha256:" + h.hexdigest()
    cache[key] = {"version": version, "digest": digest}
    return digest


MISSING = "missing"  # the digest of a data path that does not exist


def path_digest(path: str) -> str:
    """What a data file or folder holds: local files by content hash (computed once per size + mtime and kept
    in ~/.cache/llava-pipeline/digests.json), remote ones by size + ETag (the store's own content tag; nothing
    is downloaded). A folder is the digest of its files."""
    if storage.is_remote(path):
        fs, inner = storage.filesystem(path)
        if not fs.exists(inner):
            return MISSING
        entries = fs.find(inner, detail=True) if fs.isdir(inner) else {inner: fs.info(inner)}
        h = hashlib.sha256()
        for name, info in sorted(entries.items()):
            tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime")
            h.update(f"{name[len(inner):]}|{info.get('size')}|{tag}\n".encode())
        return "listing:" + h.hexdigest()
    p = Path(path)
    if not p.exists():
        return MISSING
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    before = dict(cache)
    if p.is_file():
        digest = _local_digest(p, cache)
    else:
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p)}|{_local_digest(f, cache)}\n".encode())
        digest = "tree:" + h.hexdigest()
    if cache != before:
        with contextlib.suppress(OSError):  # a read-only home only loses the cache
            storage.write_json(str(cache_path), cache)
    return digest


# ---------------------------------------------------------------- a stage's arguments


class OutputPath(str):
    """A path in another stage's output folder. It is fingerprinted as `stage/path-under-it`: that stage's
    fingerprint is an input of its own (the `upstream` part), and where the storage root lies, or what the
    folder holds, adds nothing. `join` keeps it one."""

    stage: str
    rel: str

    def __new__(cls, path: str, stage: str, rel: str = "") -> OutputPath:
        obj = super().__new__(cls, path)
        obj.stage, obj.rel = stage, rel
        return obj

    def join(self, *parts: str) -> OutputPath:
        return OutputPath(storage.join(str(self), *parts), self.stage, posixpath.join(self.rel, *parts))

    @property
    def ref(self) -> str:
        return posixpath.join(self.stage, self.rel) if self.rel else self.stage

    def __reduce__(self) -> tuple[Any, ...]:
        return (OutputPath, (str(self), self.stage, self.rel))


def _is_hub_name(value: str) -> bool:
    """A model given by name (a Hugging Face Hub id), not as a path: fingerprinted by the name alone."""
    return not storage.is_remote(value) and not Path(value).is_absolute()


@dataclass
class ArgsDigest:
    """What a stage's arguments hold, as fingerprinted: plain values by key path (`finetune.optim.lr`), and the
    content digests of the paths whose type says they are read by content."""

    values: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def walk(self, value: Any, annotation: Any, key: str) -> None:
        meta = metadata(annotation)
        if is_scheduling(meta):
            return  # where or how fast the stage runs, or a secret: never part of what it computes
        if isinstance(value, OutputPath):
            self.values[key] = f"<{value.ref}>"
            return
        if isinstance(value, NotConfigured):
            self.values[key] = NOT_CONFIGURED
            return
        kind = path_field(meta)
        if kind is not None and kind.content and isinstance(value, str):
            self.values[key] = redact(value)
            if not (kind.kind == "model" and _is_hub_name(value)):
                self.files[key] = path_digest(locate(kind.kind, value))
            return
        if isinstance(value, BaseModel):
            for name, info in type(value).model_fields.items():
                self.walk(getattr(value, name), field_type(info), f"{key}.{name}")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            hints = typing.get_type_hints(type(value), include_extras=True)
            for f in dataclasses.fields(value):
                self.walk(getattr(value, f.name), hints.get(f.name), f"{key}.{f.name}")
        elif isinstance(value, Mapping):
            for k, v in value.items():
                self.walk(v, item_type(annotation, mapping=True), f"{key}.{k}")
        elif isinstance(value, list | tuple) and any(_structured(v) for v in value):
            for i, v in enumerate(value):
                self.walk(v, item_type(annotation, mapping=False), f"{key}.{i}")
        else:
            self.values[key] = redact_json(list(value) if isinstance(value, tuple) else value)


def _structured(value: Any) -> bool:
    return isinstance(value, BaseModel | OutputPath | NotConfigured | Mapping) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type))


def describe_args(run: Callable[..., Any], args: Mapping[str, Any]) -> ArgsDigest:
    """The fingerprinted view of the keyword arguments `args` of a stage's `run`: each walked with the type
    its parameter declares (components/core/fields.py): scheduling settings and secrets left out, content-typed
    paths hashed, paths in other stages' outputs named by stage, everything else as its value."""
    hints = typing.get_type_hints(run, include_extras=True)
    params = inspect.signature(run).parameters
    digest = ArgsDigest()
    for name, value in args.items():
        if name not in params:
            raise TypeError(f"{run.__module__}.{run.__qualname__} takes no argument {name!r}")
        digest.walk(value, hints.get(name), name)
    return digest


def materialize(value: Any) -> Any:
    """`value` with every OutputPath a plain str (in sections, lists and mappings too): what a stage is called
    with. Stages never see the engine's types."""
    if isinstance(value, OutputPath):
        return str(value)
    if isinstance(value, BaseModel):
        update = {k: materialize(getattr(value, k)) for k in type(value).model_fields}
        changed = {k: v for k, v in update.items() if v is not getattr(value, k)}
        return value.model_copy(update=changed) if changed else value
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v) for v in value]
    return value


# ---------------------------------------------------------------- fingerprints


def stage_inputs(name: str, args: dict[str, Any], upstream: dict[str, str], code: str,
                 files: dict[str, str] | None = None) -> dict[str, Any]:
    return {"stage": name, "args": dict(sorted(args.items())), "upstream": dict(sorted(upstream.items())),
            "code": code, "files": dict(sorted((files or {}).items()))}


def fingerprint(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def explain(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Why `new` differs from the inputs of an earlier output (`old`), in the user's terms."""
    if old is None:
        return ["no earlier output"]
    if "args" not in old:
        return ["the earlier output was made by an older version of the pipeline"]
    reasons = []
    for part, label in (("args", "{} changed ({!r} → {!r})"), ("files", "file {} changed")):
        old_part, new_part = old.get(part, {}), new.get(part, {})
        for key in sorted(set(old_part) | set(new_part)):
            a, b = old_part.get(key, "<unset>"), new_part.get(key, "<unset>")
            if a != b:
                reasons.append(label.format(key, a, b))
    for up in sorted(set(old.get("upstream", {})) | set(new["upstream"])):
        if old.get("upstream", {}).get(up) != new["upstream"].get(up):
            reasons.append(f"upstream {up} changed")
    if old.get("code") != new["code"]:
        reasons.append("code changed")
    return reasons or ["inputs equal but no committed output"]
