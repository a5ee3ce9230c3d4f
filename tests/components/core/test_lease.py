"""Leases on a local folder and on the loopback S3 server: one holder at a time, a dead holder's lease taken
over once it expires, and a holder that lost its lease can neither renew nor release the new one."""

import pytest

from components.core.lease import Lease


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def lease_path(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out.lease")
    request.getfixturevalue("s3_server")
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists("leases"):
        fs.mkdir("leases")
    return f"s3://leases/{tmp_path.name}/out.lease"


def test_one_holder_at_a_time_then_the_next(lease_path):
    clock = Clock()
    a, b = Lease(lease_path, "a", ttl_s=60, clock=clock), Lease(lease_path, "b", ttl_s=60, clock=clock)
    assert a.try_acquire("attempt-a") == (True, None)
    got, holder = b.try_acquire("attempt-b")
    assert not got and holder is not None and holder["holder"] == "a"
    clock.now += 50
    assert a.renew()  # a live holder keeps it past the first ttl
    clock.now += 50
    assert not b.try_acquire("attempt-b")[0]
    a.release()
    assert a.current() is None
    assert b.try_acquire("attempt-b") == (True, None)
    b.release()


def test_a_dead_holders_lease_is_taken_over_once_expired(lease_path):
    clock = Clock()
    dead, next_run = Lease(lease_path, "dead", ttl_s=60, clock=clock), Lease(lease_path, "next", ttl_s=60, clock=clock)
    assert dead.try_acquire("attempt-1")[0]
    clock.now += 61  # no heartbeat for longer than the ttl
    got, previous = next_run.try_acquire("attempt-2")
    assert got and previous is not None and previous["holder"] == "dead" and previous["attempt"] == "attempt-1"
    assert not dead.renew()  # the old holder learns it lost the lease
    dead.release()  # and cannot delete the new holder's
    current = next_run.current()
    assert current is not None and current["holder"] == "next"
    next_run.release()


def test_two_takers_of_one_expired_lease_do_not_both_win(lease_path):
    clock = Clock()
    assert Lease(lease_path, "dead", ttl_s=60, clock=clock).try_acquire("x")[0]
    clock.now += 61
    first, second = Lease(lease_path, "b", ttl_s=60, clock=clock), Lease(lease_path, "c", ttl_s=60, clock=clock)
    # Both read the expired lease; the first swap wins, the second swaps against a version that is gone.
    seen = second._file.read()
    assert first.try_acquire("y")[0]
    assert second._file.swap('{"holder": "c"}', seen[1]) is None
    assert first.current()["holder"] == "b"
    first.release()


def test_an_unreadable_lease_counts_as_expired(tmp_path):
    path = tmp_path / "out.lease"
    path.write_text("{torn")
    lease = Lease(str(path), "a", ttl_s=60)
    assert lease.try_acquire("attempt")[0]
    lease.release()
    assert not path.exists()


def test_a_lease_of_a_process_of_this_host_that_died_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys

    from components.core.lease import new_holder

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, _, rest = new_holder().partition(":")
    dead_holder = f"{host}:{gone.stdout.strip()}:{rest.split(':')[1]}"
    path = str(tmp_path / "out.lease")
    assert Lease(path, dead_holder, ttl_s=3600).try_acquire("a")[0]
    alive = Lease(path, new_holder(), ttl_s=3600)
    got, previous = alive.try_acquire("b")
    assert got and previous["holder"] == dead_holder
    assert not Lease(path, new_holder(), ttl_s=3600).try_acquire("c")[0]  # this process lives
