"""The per-node lock: one holder at a time across processes, and a holder that dies frees it."""

from __future__ import annotations

import subprocess
import sys

# Takes the lock, writes "in", waits, writes "out": two holders at once would interleave their lines.
HOLD = """
import sys, time
from components.core.node_lock import node_lock
lock, log, name = sys.argv[1:4]
with node_lock(lock):
    open(log, "a").write(f"in {name}\\n")
    time.sleep(0.3)
    open(log, "a").write(f"out {name}\\n")
"""


def test_processes_take_the_lock_one_at_a_time(tmp_path):
    lock, log = tmp_path / "sub" / "k.lock", tmp_path / "log"  # the lock's folder is created on first use
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(log), str(i)]) for i in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    lines = log.read_text().split()
    pairs = [(lines[i], lines[i + 1], lines[i + 2], lines[i + 3]) for i in range(0, len(lines), 4)]
    assert len(pairs) == 4 and all(a == "in" and c == "out" and b == d for a, b, c, d in pairs)
    assert sorted(b for _, b, _, _ in pairs) == ["0", "1", "2", "3"]


def test_a_holder_that_dies_frees_the_lock(tmp_path):
    lock = tmp_path / "k.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from components.core.node_lock import node_lock\n"
                               f"with node_lock({str(lock)!r}):\n"
                               "    print('held', flush=True)\n"
                               "    time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # killed while holding: the kernel drops an flock with its last open descriptor
    holder.wait(timeout=30)
    take = f"from components.core.node_lock import node_lock\nwith node_lock({str(lock)!r}):\n    print('taken')"
    taken = subprocess.run([sys.executable, "-c", take], capture_output=True, text=True, timeout=60)  # no hang
    assert taken.stdout.strip() == "taken"
