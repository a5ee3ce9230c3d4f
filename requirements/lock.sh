#!/usr/bin/env bash
# Regenerate requirements/cpu.txt, the complete pinned set for the CPU install, from pyproject.toml's ranges
# and requirements/cpu.in:  bash requirements/lock.sh
# uv's resolver takes seconds and never backtracks into yanked releases; it runs from its own throwaway venv.
# --find-links /opt/wheels: where this machine keeps the CPU torch wheel (elsewhere: torch's CPU wheel index).
set -euo pipefail
cd "$(dirname "$0")/.."
tool="${TMPDIR:-/tmp}/llava-pipeline-lock-tool"
[ -x "$tool/bin/uv" ] || { python3 -m venv "$tool" && "$tool/bin/pip" install -q 'uv==0.13.9'; }
"$tool/bin/uv" pip compile pyproject.toml --extra test -c requirements/cpu.in \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --find-links /opt/wheels --no-emit-find-links \
  --custom-compile-command "bash requirements/lock.sh" --quiet -o requirements/cpu.txt "$@"
