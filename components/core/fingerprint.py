"""Stage fingerprints: a hash of the stage name, its resolved config, its upstream fingerprints and the
code version of the packages it runs. Equal fingerprint = reusable output; a different one comes with
the reasons (`explain`), so a rerun is explainable.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}; lists stay values."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


@lru_cache(maxsize=64)
def code_version(packages: tuple[str, ...]) -> str:
    """Hash of every .py file under the given repo-relative folders (paths and contents)."""
    h = hashlib.sha256()
    for pkg in sorted(packages):
        root = REPO_ROOT / pkg
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root] if root.exists() else []
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(REPO_ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_inputs(name: str, config: dict[str, Any], upstream: dict[str, str], code: str) -> dict[str, Any]:
    return {"stage": name, "config": flatten(config), "upstream": dict(sorted(upstream.items())), "code": code}


def fingerprint(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def explain(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Why `new` differs from the inputs of an earlier output (`old`), in the user's terms."""
    if old is None:
        return ["no earlier output"]
    reasons = []
    old_cfg, new_cfg = old.get("config", {}), new["config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key, "<unset>") != new_cfg.get(key, "<unset>"):
            reasons.append(f"{key} changed ({old_cfg.get(key, '<unset>')!r} → {new_cfg.get(key, '<unset>')!r})")
    for up in sorted(set(old.get("upstream", {})) | set(new["upstream"])):
        if old.get("upstream", {}).get(up) != new["upstream"].get(up):
            reasons.append(f"upstream {up} changed")
    if old.get("code") != new["code"]:
        reasons.append("code changed")
    return reasons or ["inputs equal but no committed output"]
