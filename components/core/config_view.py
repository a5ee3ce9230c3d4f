"""A stage's view of the config: only the key paths the stage declares can be read.

The executor fingerprints a stage on the keys it declares and hands its body this view, so a stage body
(and every component it passes the view to, on any node) cannot read a key its fingerprint does not cover:
such a read is an `UndeclaredConfigRead` naming the key and the stage, not a silently stale cache hit.

A declared section (`"pretrain"`) gives the real pydantic section; a section only partly declared gives a
view of it. `model_copy(update=...)` is allowed (it reads nothing; the sweep builds its trials' configs so);
anything else that would read a whole section (`model_dump`, ...) is refused on a partial view.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class UndeclaredConfigRead(AttributeError):
    """A stage read a config key it does not declare (and so is not fingerprinted on)."""


def _under(key: str, paths: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in paths)


def _above(key: str, paths: tuple[str, ...]) -> bool:
    return any(p.startswith(key + ".") for p in paths)


class ConfigView:
    __slots__ = ("_model", "_allowed", "_prefix", "_stage")

    def __init__(self, model: BaseModel, allowed: tuple[str, ...], stage: str, prefix: str = "") -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_allowed", tuple(allowed))
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        model: BaseModel = object.__getattribute__(self, "_model")
        prefix, allowed = self._prefix, self._allowed
        path = f"{prefix}.{name}" if prefix else name
        derived = getattr(type(model), name, None)
        if isinstance(derived, property):  # e.g. `packed`: computed on the view, so its own reads are checked
            return derived.fget(self)
        if name not in type(model).model_fields:
            raise UndeclaredConfigRead(
                f"stage {self._stage} used `{path}` on its config view; a stage reads declared keys only "
                f"(declared: {', '.join(allowed) or 'none'})")
        if _under(path, allowed):
            return getattr(model, name)
        if _above(path, allowed):
            return ConfigView(getattr(model, name), allowed, self._stage, path)
        raise UndeclaredConfigRead(
            f"stage {self._stage} read config key `{path}`, which it does not declare (so it is not in its "
            f"fingerprint); declare it in the stage's reads in pipelines/llava15.py")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the config is read-only (stage {self._stage} set `{name}`)")

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> ConfigView:
        """A view of a copy with some fields replaced: copying reads no values, and the replaced fields
        (set by the stage itself, not taken from the config) become readable."""
        update = update or {}
        plain = {k: unwrap(v) for k, v in update.items()}
        allowed = list(self._allowed)
        for k, v in update.items():
            if isinstance(v, ConfigView):  # a copied sub-view keeps its own limits (absolute key paths)
                allowed += [a for a in v._allowed if a not in allowed]
            else:
                allowed.append(f"{self._prefix}.{k}" if self._prefix else k)
        return ConfigView(self._model.model_copy(update=plain, deep=deep), tuple(allowed), self._stage, self._prefix)

    def __reduce__(self) -> tuple[Any, ...]:  # crosses to Ray workers as a view, never as the whole config
        return (ConfigView, (self._model, self._allowed, self._stage, self._prefix))

    def __repr__(self) -> str:
        return f"ConfigView(stage={self._stage!r}, prefix={self._prefix!r}, allowed={self._allowed!r})"


def unwrap(value: Any) -> Any:
    """The real model behind a view (for building a copy), anything else as is."""
    return object.__getattribute__(value, "_model") if isinstance(value, ConfigView) else value


def view(cfg: BaseModel, allowed: tuple[str, ...], stage: str) -> ConfigView:
    return ConfigView(cfg, allowed, stage)
