"""The sweep's results from its trial records: the best trial, best.json, the ablation table and heatmap.

Pure (matplotlib for the PNG, no Ray). A trial record is a dict:
  key, trial_id, connector, resolution ({image_size, name_or_path} or None), label (resolution label),
  status ("completed" | "stopped" | "error"), rungs (list of the reported metric dicts, in order),
  error (message or None), mlflow_run_id.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

COST_KEYS = ("wall_s", "pretrain_steps", "finetune_steps")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def last_value(trial: dict[str, Any], metric: str) -> float | None:
    rungs = trial.get("rungs") or []
    value = rungs[-1].get(metric) if rungs else None
    return float(value) if _finite(value) else None


def select_best(trials: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """The best trial, comparing like with like: among the trials that reached the deepest rung any trial
    reached (a trial stopped early trained less), the best metric there; ties go to the cheaper trial
    (wall time), then to the earlier grid point."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    scored = [(i, t) for i, t in enumerate(trials) if t.get("rungs") and last_value(t, metric) is not None]
    if not scored:
        errors = "; ".join(f"{t['key']}: {t.get('error')}" for t in trials if t.get("error"))
        raise RuntimeError(f"no sweep trial reported a finite {metric!r}" + (f" ({errors})" if errors else ""))
    deepest = max(len(t["rungs"]) for _, t in scored)
    finalists = [(i, t) for i, t in scored if len(t["rungs"]) == deepest]
    sign = -1.0 if mode == "max" else 1.0

    def rank(item: tuple[int, dict[str, Any]]) -> tuple[float, float, int]:
        i, t = item
        cost = t["rungs"][-1].get("wall_s")
        return (sign * last_value(t, metric), float(cost) if _finite(cost) else math.inf, i)

    return min(finalists, key=rank)[1]


def table_rows(trials: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per trial (grid order): the point, its last metric, how far it got, what it cost."""
    rows = []
    for t in trials:
        last = (t.get("rungs") or [{}])[-1]
        res = t.get("resolution") or {}
        rows.append({
            "connector": t["connector"], "resolution": t["label"], "image_size": res.get("image_size"),
            "vision": res.get("name_or_path") or "", metric: last_value(t, metric),
            "rungs": len(t.get("rungs") or []), "status": t["status"],
            **{k: last.get(k) for k in COST_KEYS}, "trial_id": t.get("trial_id"),
            "mlflow_run_id": t.get("mlflow_run_id"),
        })
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def axes(trials: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(connectors, resolution labels) in grid order."""
    connectors, labels = [], []
    for t in trials:
        if t["connector"] not in connectors:
            connectors.append(t["connector"])
        if t["label"] not in labels:
            labels.append(t["label"])
    return connectors, labels


def to_markdown(trials: list[dict[str, Any]], metric: str, mode: str, best: dict[str, Any], rungs: int) -> str:
    """The paper-style ablation grid (connector rows × resolution columns), then every trial in detail."""
    connectors, labels = axes(trials)
    cell = {(t["connector"], t["label"]): t for t in trials}
    lines = [f"## Sweep: {metric} ({mode}) by connector × resolution", "",
             f"Best: **{best['connector']} @ {best['label']}** ({metric} {_fmt(last_value(best, metric))}). "
             f"Cells: {metric} at the last rung reached (of {rungs}); † = stopped early by ASHA.", "",
             "| connector | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for c in connectors:
        parts = []
        for label in labels:
            t = cell.get((c, label))
            if t is None:
                parts.append("")
                continue
            if t["status"] == "error":
                parts.append("error")
                continue
            mark = "†" if t["status"] == "stopped" else ""
            value = _fmt(last_value(t, metric))
            parts.append(f"**{value}**{mark}" if t is best else f"{value}{mark}")
        lines.append(f"| {c} | " + " | ".join(parts) + " |")
    lines += ["", f"| connector | resolution | {metric} | rungs | status | wall s | pretrain steps | "
              "finetune steps |", "|---|---|---|---|---|---|---|---|"]
    for row in table_rows(trials, metric):
        lines.append(f"| {row['connector']} | {row['resolution']} | {_fmt(row[metric])} | {row['rungs']}/{rungs} | "
                     f"{row['status']} | {_fmt(row['wall_s'], 1)} | {_fmt(row['pretrain_steps'])} | "
                     f"{_fmt(row['finetune_steps'])} |")
    return "\n".join(lines) + "\n"


def heatmap_png(trials: list[dict[str, Any]], metric: str, mode: str, rungs: int) -> bytes:
    """connector × resolution → metric (colour and number), each cell with its cost (wall time, steps) and
    how far it got; the best cell outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    connectors, labels = axes(trials)
    values = np.full((len(connectors), len(labels)), np.nan)
    cell = {}
    for t in trials:
        i, j = connectors.index(t["connector"]), labels.index(t["label"])
        v = last_value(t, metric)
        values[i, j] = np.nan if v is None else v
        cell[i, j] = t
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(labels), 1.2 + 1.0 * len(connectors)), dpi=110)
    cmap = matplotlib.colormaps["viridis" if mode == "max" else "viridis_r"].with_extremes(bad="#dddddd")
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    try:
        best = select_best(trials, metric, mode)
    except RuntimeError:
        best = None
    for (i, j), t in cell.items():
        last = (t.get("rungs") or [{}])[-1]
        v = values[i, j]
        head = "error" if t["status"] == "error" else ("–" if not np.isfinite(v) else f"{v:.2f}")
        cost = []
        if _finite(last.get("wall_s")):
            cost.append(f"{last['wall_s']:.0f}s")
        steps = [last.get(k) for k in ("pretrain_steps", "finetune_steps")]
        if all(_finite(s) for s in steps):
            cost.append(f"{int(steps[0])}+{int(steps[1])} steps")
        got = f"rung {len(t.get('rungs') or [])}/{rungs}" + (" (ASHA stop)" if t["status"] == "stopped" else "")
        shade = (v - vmin) / (vmax - vmin) if np.isfinite(v) else 1.0
        colour = "white" if (shade < 0.5) == (mode == "max") else "black"
        ax.text(j, i, f"{head}\n{' · '.join(cost)}\n{got}", ha="center", va="center", fontsize=8, color=colour)
        if t is best:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(connectors)), connectors)
    ax.set_xlabel("resolution")
    ax.set_ylabel("connector")
    ax.set_title(f"sweep: {metric} ({mode}); cost = wall time · pretrain+finetune steps")
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def best_json(trials: list[dict[str, Any]], metric: str, mode: str, rungs: int,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `auto` reads: the best values, its metric, and every trial with its rungs."""
    best = select_best(trials, metric, mode)
    value = last_value(best, metric)
    tied = [t["key"] for t in trials if len(t.get("rungs") or []) == len(best["rungs"])
            and last_value(t, metric) == value]
    return {
        "tied_with_best": tied,  # more than one: the metric did not separate them; cost (then grid order) did
        "best": {"connector": best["connector"], "resolution": best["resolution"], "label": best["label"],
                 "key": best["key"], "trial_id": best.get("trial_id"), "value": last_value(best, metric),
                 "rungs": len(best["rungs"]), "mlflow_run_id": best.get("mlflow_run_id")},
        "metric": metric, "mode": mode, "rungs": rungs,
        "counts": {"trials": len(trials), "completed": sum(t["status"] == "completed" for t in trials),
                   "stopped_early": sum(t["status"] == "stopped" for t in trials),
                   "errors": sum(t["status"] == "error" for t in trials)},
        "trials": trials, **(extra or {}),
    }
