"""A PNG of the DAG: one box per stage, coloured by status, with its duration; arrows for dependencies."""

from __future__ import annotations

import io
from typing import Any

from .console import display_status

COLORS = {"ran": "#8fd18f", "cached": "#9ec5fe", "failed": "#f28b82", "skipped": "#dddddd"}


def dag_png(stages: list[Any], results: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level: dict[str, int] = {}
    for s in stages:  # topological order
        level[s.name] = 1 + max((level[d] for d in (*s.deps, *getattr(s, "after", ()))), default=-1)
    columns: dict[int, list[str]] = {}
    for name, lv in level.items():
        columns.setdefault(lv, []).append(name)
    pos = {name: (lv, -i) for lv, names in columns.items() for i, name in enumerate(names)}
    height = max(len(v) for v in columns.values())
    fig, ax = plt.subplots(figsize=(2.4 * len(columns) + 1, 0.9 * height + 1))
    for s in stages:
        x, y = pos[s.name]
        for d in (*s.deps, *getattr(s, "after", ())):
            dx, dy = pos[d]
            dashed = d not in s.deps  # `after`: the config comes from there (auto), not the data
            ax.annotate("", xy=(x - 0.4, y), xytext=(dx + 0.4, dy),
                        arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.8,
                                    "linestyle": "--" if dashed else "-"})
    for s in stages:
        x, y = pos[s.name]
        r = results.get(s.name, {"status": "skipped", "duration_s": 0})
        status = display_status(r)  # a benchmark that ran nothing (no judge) is grey, not green
        ax.add_patch(plt.Rectangle((x - 0.4, y - 0.3), 0.8, 0.6, color=COLORS.get(status, "#ffffff"), ec="k"))
        ax.text(x, y + 0.08, s.name, ha="center", va="center", fontsize=8, weight="bold")
        ax.text(x, y - 0.15, f"{status} {r.get('duration_s', 0):.0f}s", ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(-height + 0.4, 0.6)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
