"""Leases on S3 through the fault-injecting proxy (tests/faults/s3_proxy.py): renewals hit by 503 SlowDown, a
stall past the client's timeout or a lost answer are retried and the lease stays held; renewals failing until
the lease may have expired mark it lost, and the holder's `fence()` (a commit's check) is refused while the
run that took it over holds it."""

from __future__ import annotations

import time

import pytest

from components.core import heartbeat
from components.core.lease import Lease, LeaseLost
from tests.faults.s3_proxy import Rule

TTL_S = 5.0  # short, so that "past the ttl" takes seconds; the client timeouts are 1 s at this ttl
LEASE_KEY = r"\.lease$"


@pytest.fixture
def lease_path(s3_faults, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists("leases"):
        fs.mkdir("leases")
    return f"s3://leases/{tmp_path.name}/out.lease"


def renewals(proxy, what: str) -> int:
    return sum(1 for method, path, seen in proxy.seen if method == "PUT" and path.endswith(".lease") and seen == what)


def test_backoff_grows_with_jitter_and_is_capped():
    waits = [heartbeat.backoff_s(n) for n in range(12)]
    assert 0.1 <= waits[0] <= 0.2 and 0.8 <= waits[3] <= 1.6 and all(w <= heartbeat.MAX_BACKOFF_S for w in waits)
    assert len({heartbeat.backoff_s(4) for _ in range(10)}) > 1  # jittered


@pytest.mark.parametrize("fault", [Rule("slowdown", "PUT", LEASE_KEY, times=4),
                                   Rule("stall", "PUT", LEASE_KEY, times=2, stall_s=2.5),
                                   Rule("drop", "PUT", LEASE_KEY, times=3)], ids=lambda r: r.action)
def test_renewals_survive_transient_faults(s3_faults, lease_path, fault):
    lease = Lease(lease_path, "a", ttl_s=TTL_S)
    assert lease.try_acquire("attempt-a")[0]
    s3_faults.add(fault)
    with lease.keep_alive(every_s=0.3):
        deadline = time.monotonic() + 2 * TTL_S
        while fault.hits < (fault.times or 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # renewals after the faults go through
        assert fault.hits == fault.times and lease.lost is None
        lease.fence()  # still held at the version this holder last wrote
    assert renewals(s3_faults, "200") >= 2  # renewals (and the fence) succeeded after the faults
    assert lease.current()["holder"] == "a"
    lease.release()


def test_a_renewal_that_landed_but_whose_answer_was_lost_is_recognised_as_ours(s3_faults, lease_path):
    """The put took effect and its answer was lost; the retry failed its If-Match: still our lease."""
    lease = Lease(lease_path, "a", ttl_s=TTL_S)
    assert lease.try_acquire("attempt-a")[0]
    rule = s3_faults.add(Rule("lose_answer", "PUT", LEASE_KEY, times=1))
    # The client sees a dropped connection after the put landed; its retry fails the If-Match, and the lease
    # finds its own holder there and goes on from that version.
    assert lease.renew() and rule.hits == 1 and renewals(s3_faults, "200 lost") == 1
    assert renewals(s3_faults, "412") == 1
    lease.fence()
    assert lease.lost is None and lease.current()["holder"] == "a"
    lease.release()
    assert lease.current() is None


def test_renewals_failing_past_the_ttl_lose_the_lease_and_the_next_holder_wins(s3_faults, lease_path):
    a = Lease(lease_path, "a", ttl_s=TTL_S)
    assert a.try_acquire("attempt-a")[0]
    outage = s3_faults.add(Rule("slowdown", "PUT", LEASE_KEY, until=time.monotonic() + TTL_S + 1.5))
    started = time.monotonic()
    with a.keep_alive(every_s=0.5):
        while a.lost is None and time.monotonic() - started < 3 * TTL_S:
            time.sleep(0.1)
        # Marked lost before the lease can expire (ttl minus the margin since the last renewal).
        assert a.lost is not None and "reduce your request rate" in a.lost and time.monotonic() - started < TTL_S
        while time.monotonic() < outage.until:
            time.sleep(0.1)
        b = Lease(lease_path, "b", ttl_s=TTL_S)
        got, previous = b.try_acquire("attempt-b")
        assert got and previous["holder"] == "a"
        with pytest.raises(LeaseLost, match="lost: renewal failing"):
            a.fence()
    assert b.current()["holder"] == "b"
    a.release()  # not a's to delete any more
    assert b.current()["holder"] == "b"
    b.fence()
    b.release()


@pytest.fixture(params=["local", "s3"])
def any_lease_path(request, tmp_path):
    return str(tmp_path / "out.lease") if request.param == "local" else request.getfixturevalue("lease_path")


def test_a_holder_whose_lease_was_taken_over_is_refused_at_fence(any_lease_path):
    """No storage error at all: the holder stalled (a long GC pause) past its ttl and another run took over."""
    lease_path, now = any_lease_path, [1000.0]
    a = Lease(lease_path, "a", ttl_s=TTL_S, clock=lambda: now[0])
    b = Lease(lease_path, "b", ttl_s=TTL_S, clock=lambda: now[0])
    assert a.try_acquire("attempt-a")[0]
    now[0] += TTL_S + 1
    assert b.try_acquire("attempt-b")[0]
    with pytest.raises(LeaseLost, match="taken over by b"):
        a.fence()
    b.release()
