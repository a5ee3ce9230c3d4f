"""The executor on S3 through the fault-injecting proxy (tests/faults/s3_proxy.py): 503 SlowDown, stalls and
dropped connections on reads and writes are retried and the stage commits; a run whose lease renewals fail
past the ttl is refused at commit while the run that took over commits; a forced rerun that fails leaves the
old output intact, readable and planned as cached (local and S3)."""

from __future__ import annotations

import json
import time

import pytest

from components.core import storage
from components.core.stage_run import StageRun
from pipelines.engine import attempts
from pipelines.engine.executor import Stage, execute, make_plan, read_manifest
from tests.faults.s3_proxy import Rule

TTL_S = 5.0


@pytest.fixture
def s3_root(s3_faults, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists("faults"):
        fs.mkdir("faults")
    return f"s3://faults/{tmp_path.name}"


def value_stage(during=None) -> list[Stage]:
    """One stage writing value.json (its attempt id) and reading it back; `during(run)` runs then."""
    def body(*, lr: float, run: StageRun) -> dict:
        path = storage.join(run.out, "value.json")
        storage.write_bytes(path, json.dumps({"attempt": run.attempt}).encode())
        read_back = json.loads(storage.read_bytes(path))["attempt"] == run.attempt
        if during is not None:
            during(run)
        return {"read_back": read_back}
    return [Stage("a", (), body, lambda up: {"lr": 0.002})]


def run_dag(stages, root, **kw):
    plan = make_plan(stages, root, **kw)
    return plan, execute(plan, root, None)


def test_transient_faults_on_reads_and_writes_are_retried_and_the_stage_commits(s3_faults, s3_root):
    rules = [s3_faults.add(r) for r in (
        Rule("slowdown", "PUT", r"value\.json$", times=2),
        Rule("drop", "PUT", r"value\.json$", times=1),
        Rule("slowdown", "GET", r"value\.json$", times=2),
        Rule("stall", "GET", r"value\.json$", times=1, stall_s=2.0),  # then the retry stalls, and is answered
        Rule("slowdown", "PUT", r"_stage_manifest\.json$", times=2),
        Rule("slowdown", "PUT", r"\.lease$", times=2),
    )]
    plan, results = run_dag(value_stage(), s3_root)
    assert results["a"]["status"] == "ran", results["a"].get("error")
    assert results["a"]["metrics"] == {"read_back": True}
    assert [r.hits for r in rules] == [r.times for r in rules]  # every fault was met, and retried past
    manifest = read_manifest(plan[0].out)
    value = json.loads(storage.read_bytes(storage.join(plan[0].out, "value.json")))
    assert manifest is not None and value["attempt"] == manifest["attempt"]


def test_a_run_whose_renewals_fail_past_the_ttl_is_refused_at_commit_and_the_next_run_commits(
        s3_faults, s3_root, monkeypatch):
    monkeypatch.setattr(attempts, "LEASE_TTL_S", TTL_S)
    monkeypatch.setattr(attempts, "LEASE_POLL_S", 0.2)
    second: dict = {}

    def outage_then_another_run(run: StageRun) -> None:
        outage = s3_faults.add(Rule("slowdown", "PUT", r"\.lease$", until=time.monotonic() + TTL_S + 1.5))
        while time.monotonic() < outage.until:  # run A's renewals all fail, past its ttl
            time.sleep(0.1)
        # Run B (another process in real life) finds the lease expired, takes it over, runs and commits.
        second["plan"], second["results"] = run_dag(value_stage(), s3_root)

    plan, first = run_dag(value_stage(outage_then_another_run), s3_root)
    b = second["results"]["a"]
    assert b["status"] == "ran", b.get("error")
    assert first["a"]["status"] == "failed"
    error = first["a"]["error"]
    assert error.startswith("LeaseLost: a: not committing " + plan[0].out) and "reduce your request rate" in error
    manifest = read_manifest(plan[0].out)
    assert manifest is not None and manifest["finished_at"] == pytest.approx(time.time(), abs=60)
    value = json.loads(storage.read_bytes(storage.join(plan[0].out, "value.json")))
    assert value["attempt"] == manifest["attempt"]  # B's output, whole; nothing of A's
    fs, inner = storage.filesystem(storage.join(s3_root, "artifacts", "a"))
    assert not fs.exists(inner + f"/{plan[0].fingerprint}.lease")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_forced_rerun_that_fails_leaves_the_old_output_until_one_commits(where, tmp_path, request):
    root = str(tmp_path / "store") if where == "local" else request.getfixturevalue("s3_root")
    plan, results = run_dag(value_stage(), root)
    assert results["a"]["status"] == "ran"
    out, old = plan[0].out, read_manifest(plan[0].out)
    seen: list[str] = []

    def old_output_still_there(run: StageRun) -> None:
        assert read_manifest(out) == old
        assert make_plan(value_stage(), root)[0].action == "cached"  # what `plan` reports meanwhile
        seen.append(run.attempt)
        raise RuntimeError("killed midway")

    _, forced = run_dag(value_stage(old_output_still_there), root, force=["a"])
    assert forced["a"]["status"] == "failed" and seen and seen[0] != old["attempt"]
    again = make_plan(value_stage(), root)[0]
    assert again.action == "cached" and again.manifest == old
    assert json.loads(storage.read_bytes(storage.join(out, "value.json")))["attempt"] == old["attempt"]

    _, forced = run_dag(value_stage(), root, force=["a"])
    assert forced["a"]["status"] == "ran"
    new = read_manifest(out)
    assert new["attempt"] not in (old["attempt"], seen[0])
    assert json.loads(storage.read_bytes(storage.join(out, "value.json")))["attempt"] == new["attempt"]
    fs, inner = storage.filesystem(storage.join(root, "artifacts", "a", attempts.ATTEMPTS))
    assert not fs.exists(inner) or not fs.glob(inner + f"/{plan[0].fingerprint}-*")
