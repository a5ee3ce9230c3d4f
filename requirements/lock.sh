#!/usr/bin/env bash
# Regenerate the pinned locks from pyproject.toml's ranges and requirements/cpu.in:  bash requirements/lock.sh
#   requirements/cpu.txt      every package of the CPU install with the test tools (README's set-up, CI)
#   requirements/cluster.txt  the same versions without torch and the test tools, for the cluster image and
#                             launcher, which install a CUDA torch first (cluster/Dockerfile)
# uv's resolver takes seconds and never backtracks into yanked releases; it runs from its own throwaway venv.
# --find-links /opt/wheels: where this machine keeps the CPU torch wheel (elsewhere: torch's CPU wheel index).
set -euo pipefail
cd "$(dirname "$0")/.."
tool="${TMPDIR:-/tmp}/llava-pipeline-lock-tool"
[ -x "$tool/bin/uv" ] || { python3 -m venv "$tool" && "$tool/bin/pip" install -q 'uv==0.13.9'; }
compile=("$tool/bin/uv" pip compile pyproject.toml -c requirements/cpu.in --python-version 3.11
         --python-platform x86_64-manylinux_2_28 --find-links /opt/wheels --no-emit-find-links
         --custom-compile-command "bash requirements/lock.sh" --quiet)
"${compile[@]}" --extra test -o requirements/cpu.txt "$@"
"${compile[@]}" --no-emit-package torch -o requirements/cluster.txt "$@"
# Same resolution inputs, so every package both files name has one version.
python3 - <<'PY'
import re
def pins(path):
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open(path).read(), re.M))
cpu, cluster = pins("requirements/cpu.txt"), pins("requirements/cluster.txt")
bad = {k: (cpu.get(k), v) for k, v in cluster.items() if cpu.get(k) != v}
assert not bad and "torch" not in cluster, f"the two locks disagree: {bad}"
PY
