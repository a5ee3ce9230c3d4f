"""stdout is for results: inside `captured`, whatever Python, C code or child processes print goes to the log."""

import subprocess
import sys
import textwrap

from pipelines.engine.console import display_status

SCRIPT = textwrap.dedent("""
    import os, subprocess, sys
    from pathlib import Path
    from pipelines.engine.console import captured

    with captured(Path(sys.argv[1]), verbose=sys.argv[2] == "1") as console:
        print("a library's print")
        os.write(2, b"a C extension on fd 2\\n")
        subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
        console.line('{"result": 1}')
        console.line("progress", to_err=True)
    print("after: the descriptors are back")
""")


def _run(tmp_path, verbose: bool) -> tuple[subprocess.CompletedProcess[str], str]:
    log = tmp_path / "logs" / "run.log"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log), "1" if verbose else "0"], capture_output=True,
                          text=True, timeout=60, check=True)
    return proc, log.read_text()


def test_library_output_goes_to_the_log_and_results_to_stdout(tmp_path):
    proc, log = _run(tmp_path, verbose=False)
    assert proc.stdout == '{"result": 1}\nafter: the descriptors are back\n'
    assert proc.stderr == "progress\n"
    assert log.splitlines() == ["a library's print", "a C extension on fd 2", "a child process"]


def test_verbose_also_shows_library_output_on_stderr(tmp_path):
    proc, log = _run(tmp_path, verbose=True)
    assert proc.stdout == '{"result": 1}\nafter: the descriptors are back\n'
    assert "a child process" in proc.stderr and "a C extension on fd 2" in proc.stderr and "progress" in proc.stderr
    assert log.splitlines() == ["a library's print", "a C extension on fd 2", "a child process"]


def test_a_benchmark_that_ran_nothing_reads_as_skipped():
    assert display_status({"status": "ran", "metrics": {"status": "skipped"}}) == "skipped"
    assert display_status({"status": "cached", "metrics": {"status": "ok"}}) == "cached"
    assert display_status({"status": "failed", "metrics": {}}) == "failed"
