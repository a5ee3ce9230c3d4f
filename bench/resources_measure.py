"""Measure a real `llava-pipeline run`: peak memory of its whole process tree and peak disk, per stage.

The run is a child process in a fresh folder, with its storage root, Ray's temp folder (RAY_TMPDIR) and the
temp folder of everything it starts (TMPDIR) inside that folder, so the disk figure is everything the run
writes on this node and nothing of other programs. Memory is the sum of PSS (proportional set size: a page
shared by n processes counts 1/n in each) over the run's process tree (the driver, Ray's own processes and
every Ray worker it forks), so shared memory (the object store) counts once, as the kernel charges it.
Stage windows come from the run's own stage lines ("HH:MM:SS <stage> started" … "<stage> ran").

    python -m bench.resources_measure tiny                          # predicted vs measured, per stage
    python -m bench.resources_measure tiny --set data.synth.size=small
    python -m bench.resources_measure tiny --breakdown              # + each stage's processes at its peak

Target: every ratio (the plan's figure / the measured peak) within 0.75-1.25.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

STAGE_LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+)\s+(started|ran|failed|cached)\b")


@dataclass
class Sample:
    t: float
    memory: int  # bytes, PSS summed over the process tree
    disk: int  # bytes under the run's folder
    processes: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (processes, PSS bytes)


@dataclass
class Measurement:
    samples: list[Sample] = field(default_factory=list)
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> (start, end)
    returncode: int | None = None
    output: str = ""

    def peak(self, what: str, stage: str | None = None) -> int:
        """Peak memory or disk over the run, or inside one stage's window."""
        lo, hi = self.windows.get(stage, (0.0, float("inf"))) if stage else (0.0, float("inf"))
        values = [getattr(s, what) for s in self.samples if lo <= s.t <= hi]
        return max(values, default=0)

    def breakdown(self, stage: str | None = None) -> dict[str, tuple[int, int]]:
        """The process tree at the memory peak (of the run, or of one stage's window), by process kind."""
        lo, hi = self.windows.get(stage, (0.0, float("inf"))) if stage else (0.0, float("inf"))
        inside = [s for s in self.samples if lo <= s.t <= hi]
        return max(inside, key=lambda s: s.memory).processes if inside else {}


def label(p: psutil.Process) -> str:
    """A process's kind: Ray names its workers by their task or actor (`ray::RayTrainWorker`), a Python
    program is named by its module or script, anything else by its executable."""
    name = p.name()
    if name.startswith("ray::"):
        return name.split(".")[0]
    args = p.cmdline()
    if name.startswith("python") and len(args) > 1:
        rest = args[1:]
        if "-c" in rest:
            return "python -c"
        if "-m" in rest and rest.index("-m") + 1 < len(rest):
            return "python -m " + rest[rest.index("-m") + 1]
        script = next((a for a in rest if not a.startswith("-")), "")
        return "python " + Path(script).name
    return name


def tree_pss(root: psutil.Process) -> dict[str, tuple[int, int]]:
    """PSS of the process tree by process kind: label -> (how many, bytes)."""
    out: dict[str, tuple[int, int]] = {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            kind, pss = label(p), p.memory_full_info().pss
        except psutil.Error:  # ended between the listing and the read
            continue
        n, total = out.get(kind, (0, 0))
        out[kind] = (n + 1, total + pss)
    return out


def dir_bytes(path: Path) -> int:
    """Allocated bytes under `path` (what `du` counts: sparse files and block rounding as the disk sees them)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total


def measure_run(config: str, overrides: list[str], workdir: Path, *, period_s: float = 0.5) -> Measurement:
    """Run the pipeline in `workdir` and sample it until it exits."""
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("ray", "tmp"):
        (workdir / sub).mkdir(exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(workdir / "ray"), "TMPDIR": str(workdir / "tmp")}
    args = [sys.executable, "-m", "pipelines.engine.cli", "run", config, "--set", f"storage={workdir / 'runs'}"]
    for item in overrides:
        args += ["--set", item]
    m = Measurement()
    start = time.monotonic()
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - start
            lines.append(line)
            hit = STAGE_LINE.match(line)
            if hit:
                stage, event = hit.groups()
                if event == "started":
                    m.windows[stage] = (now, float("inf"))
                elif stage in m.windows:
                    m.windows[stage] = (m.windows[stage][0], now)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        procs = tree_pss(root)
        m.samples.append(Sample(time.monotonic() - start, sum(b for _, b in procs.values()),
                                dir_bytes(workdir), procs))
        time.sleep(period_s)
    reader.join(timeout=10)
    m.samples.append(Sample(time.monotonic() - start, 0, dir_bytes(workdir)))
    m.returncode, m.output = proc.returncode, "".join(lines)
    return m


def predicted(config: str, overrides: list[str], workdir: Path) -> dict[str, tuple[int, int]]:
    """The resource plan's (host memory, local disk) per stage for this machine, as `measure_run` runs it."""
    from pipelines.config import load_config
    from pipelines.engine.resources_cmd import plan_resources

    cfg = load_config(config, [*overrides, f"storage={workdir / 'runs'}"])
    placement = plan_resources(cfg)
    return {p.need.stage: (p.host, p.disk) for p in placement.stages}


def stage_windows(m: Measurement) -> dict[str, tuple[float, float]]:
    """Windows per planned stage: the evaluate jobs' windows merged into one "evaluate" (one warm pool)."""
    merged: dict[str, tuple[float, float]] = {}
    for name, (lo, hi) in m.windows.items():
        key = name.split(".")[0]
        old = merged.get(key)
        merged[key] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return merged


def report(config: str, overrides: list[str], workdir: Path) -> list[dict[str, object]]:
    """Run the config, then per stage: predicted vs measured peak memory and disk, and their ratios."""
    plan = predicted(config, overrides, workdir)
    m = measure_run(config, overrides, workdir)
    if m.returncode != 0:  # the stages that ended are still measured; the rest are left out, and said so
        print(f"the run failed (exit {m.returncode}); reporting the stages that ended:\n{m.output[-4000:]}",
              file=sys.stderr)
    m.windows = stage_windows(m)
    rows = []
    for stage, (host, disk) in plan.items():
        if stage not in m.windows or m.windows[stage][1] == float("inf"):
            continue
        mem, used = m.peak("memory", stage), m.peak("disk", stage)
        rows.append({"stage": stage, "host_predicted": host, "host_measured": mem, "host_ratio": host / mem,
                     "disk_predicted": disk, "disk_measured": used, "disk_ratio": disk / max(used, 1),
                     "processes_at_peak": m.breakdown(stage)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", default=None, help="default: a fresh temporary folder (deleted after)")
    parser.add_argument("--json", default=None, metavar="FILE")
    parser.add_argument("--breakdown", action="store_true",
                        help="also each stage's process tree at its memory peak, by process kind (PSS)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="resources-") as tmp:
        rows = report(args.config, args.set, Path(args.workdir or tmp))
    mib = 2**20
    print(f"{'stage':10s} {'host pred':>10s} {'measured':>10s} {'ratio':>6s}   {'disk pred':>10s} {'measured':>10s} "
          f"{'ratio':>6s}")
    for r in rows:
        print(f"{r['stage']:10s} {r['host_predicted'] / mib:9.0f}M {r['host_measured'] / mib:9.0f}M "
              f"{r['host_ratio']:6.2f}   {r['disk_predicted'] / mib:9.0f}M {r['disk_measured'] / mib:9.0f}M "
              f"{r['disk_ratio']:6.2f}")
    if args.breakdown:
        for r in rows:
            print(f"\n{r['stage']} at its peak:")
            procs: dict[str, tuple[int, int]] = r["processes_at_peak"]  # type: ignore[assignment]
            for kind, (n, b) in sorted(procs.items(), key=lambda kv: -kv[1][1]):
                print(f"  {b / mib:7.0f} MiB  {n:3d} x {kind}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
