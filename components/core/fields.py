"""What a config field's or a stage argument's type says beyond its Python type, read by two generic walkers:
`components.core.paths.resolve_local_paths` (how a local path is made absolute) and
`components.core.fingerprint.describe_args` (how a stage's arguments are fingerprinted).

    num_workers: Annotated[int, SCHEDULING]   # where or how fast work runs, never what it computes
    annotations: DataFile                     # a file the stage reads: fingerprinted by its content

Nothing is listed twice by hand: a field's type is its resolution and its fingerprint rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin


@dataclass(frozen=True)
class Scheduling:
    """Changes where or how fast work runs, not its result: never part of a fingerprint."""


@dataclass(frozen=True)
class Secret:
    """A credential: never part of a fingerprint, a manifest or a log."""


SCHEDULING = Scheduling()
SECRET = Secret()

PathKind = Literal["path", "model", "deepspeed", "sqlite"]


@dataclass(frozen=True)
class PathField:
    """A path. `kind` says how a local one is made absolute at config load (paths.py); `content` that the
    stage reading it is fingerprinted on what the path holds, not only on its name."""

    kind: PathKind = "path"
    content: bool = False


# Where things are written, or folders read file by file (image folders: see README on fingerprints).
StoragePath = Annotated[str, PathField("path")]
# A file or folder a stage reads whole: fingerprinted by content (local sha256, s3:// size + ETag).
DataFile = Annotated[str, PathField("path", content=True)]
# A model checkpoint: a local folder or s3:// URL is fingerprinted by content, a Hub name by its name.
ModelPath = Annotated[str, PathField("model", content=True)]
# A DeepSpeed JSON: a local file, or a packaged one by name (configs/deepspeed/...).
DeepSpeedFile = Annotated[str, PathField("deepspeed", content=True)]
# An MLflow tracking URI: a relative sqlite:/// path is made absolute.
TrackingURI = Annotated[str, PathField("sqlite")]


class NotConfigured:
    """A setting with no value in this environment (e.g. no GPT judge): the stage reading it skips, says why,
    and is fingerprinted as NOT_CONFIGURED (a later run with the setting does not share its output)."""


NOT_CONFIGURED = "not configured"


def metadata(annotation: Any) -> tuple[Any, ...]:
    """The Annotated metadata of a type, looked for through `X | None`."""
    if get_origin(annotation) is Annotated:
        return tuple(annotation.__metadata__)
    found: tuple[Any, ...] = ()
    for arg in get_args(annotation):
        if get_origin(arg) is Annotated:
            found += tuple(arg.__metadata__)
    return found


def field_type(info: Any) -> Any:
    """A pydantic field's full type: pydantic moves a top-level Annotated's metadata to `info.metadata`."""
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def item_type(annotation: Any, *, mapping: bool) -> Any:
    """The type of a container type's items (a list's elements, a mapping's values), if it says one."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    for option in options:
        origin, args = get_origin(option), get_args(option)
        if mapping and origin in (dict, Mapping) and len(args) == 2:
            return args[1]
        if not mapping and origin in (list, tuple, Sequence) and args:
            return args[0]
    return None


def path_field(meta: tuple[Any, ...]) -> PathField | None:
    return next((m for m in meta if isinstance(m, PathField)), None)


def is_scheduling(meta: tuple[Any, ...]) -> bool:
    return any(isinstance(m, Scheduling | Secret) for m in meta)
