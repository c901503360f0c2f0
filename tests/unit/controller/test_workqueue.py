"""The work queue: one worker per key, adds folded together, delays and back-off."""

from __future__ import annotations

import threading

import pytest

from modelpilot_operator.controller import ShutDownError, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_adds_of_a_queued_key_fold_into_one() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a"):
        q.add(key)
    assert q.depth() == 2
    assert [q.get(0), q.get(0), q.get(0)] == ["a", "b", None]


def test_a_key_is_handed_to_one_worker_at_a_time() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")  # an event while a worker holds the key
    assert q.get(0) is None, "not to a second worker while the first holds it"
    q.done("a")
    assert q.get(0) == "a", "again once the first is done: it must see the new event"
    q.done("a")
    assert q.get(0) is None


def test_add_after_waits_and_the_earliest_time_wins() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("a", 10)
    q.add_after("a", 30)
    q.add_after("a", 5)
    assert q.get(0) is None
    assert q.pending() == 1
    clock.now += 5
    assert q.get(0) == "a"
    q.done("a")
    clock.now += 100
    assert q.get(0) is None, "the later times were folded into the earliest"


def test_back_off_doubles_until_forgotten() -> None:
    q: WorkQueue[str] = WorkQueue(base_delay=0.5, max_delay=3.0, clock=Clock())
    delays = [q.add_rate_limited("a") for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert q.failures("a") == 5
    q.forget("a")
    assert q.add_rate_limited("a") == 0.5


def test_drop_forgets_a_deleted_object() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add("a")
    q.add_after("b", 1)
    q.drop("a")
    q.drop("b")
    clock.now += 2
    assert q.get(0) is None


def test_get_blocks_until_an_add_and_shut_down_wakes_every_worker() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    stopped: list[bool] = []

    def worker() -> None:
        try:
            while True:
                key = q.get()
                got.append(key)
                assert key is not None
                q.done(key)
        except ShutDownError:
            stopped.append(True)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    q.add("a")
    q.add("b")
    while len(got) < 2:
        threading.Event().wait(0.01)
    q.shut_down()
    for t in threads:
        t.join(timeout=5)
    assert sorted(k for k in got if k) == ["a", "b"]
    assert stopped == [True, True, True]
    with pytest.raises(ShutDownError):
        q.get(0)
