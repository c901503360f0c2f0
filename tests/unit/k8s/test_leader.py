"""Leader election on a Lease: one leader at a time, hand-over after the lease duration,
at once after a release or for the same identity."""

from __future__ import annotations

from modelpilot_operator.k8s.kinds import LEASE
from modelpilot_operator.k8s.leader import LeaderElector

from .fake import FakeApi


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api: FakeApi, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(api, "ops", "modelpilot-operator", identity, 15.0, 10.0, 2.0, clock=clock)


def test_one_leader_and_a_hand_over_after_the_lease_duration() -> None:
    api, clock = FakeApi(), Clock()
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    assert a.round()
    assert not b.round()
    history = []
    # a stops renewing (its node died); b keeps trying every retry period.
    for _ in range(12):
        clock.now += 2.0
        b.round()
        assert not (a.is_leader() and b.is_leader()), "two leaders at once"
        history.append((a.is_leader(), b.is_leader()))
    assert history[0] == (True, False)
    assert history[-1] == (False, True)
    # a lost leadership (renew deadline, 10 s) before b could take it (lease, 15 s).
    first_b = next(i for i, (_, lb) in enumerate(history) if lb)
    last_a = max(i for i, (la, _) in enumerate(history) if la)
    assert last_a < first_b
    lease = api.get(LEASE, "ops", "modelpilot-operator")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1


def test_a_renewing_leader_keeps_the_lease() -> None:
    api, clock = FakeApi(), Clock()
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    a.round()
    for _ in range(30):
        clock.now += 2.0
        assert a.round()
        assert not b.round()


def test_a_released_lease_is_taken_at_once() -> None:
    api, clock = FakeApi(), Clock()
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    a.round()
    b.round()
    a.stop(release=True)
    assert not a.is_leader()
    assert b.round()


def test_the_same_identity_takes_its_lease_back_at_once() -> None:
    """A container restarted in its pod keeps the pod's name as its identity."""
    api, clock = FakeApi(), Clock()
    elector(api, clock, "pod-1").round()
    restarted = elector(api, clock, "pod-1")
    assert restarted.round()


def test_leadership_ends_when_renewing_fails() -> None:
    api, clock = FakeApi(), Clock()
    a = elector(api, clock, "a")
    assert a.round()
    lease = api.get(LEASE, "ops", "modelpilot-operator")
    assert lease is not None
    lease["spec"]["holderIdentity"] = "someone-else"
    api.update(lease, manager="someone-else")
    clock.now += 2.0
    assert a.round() is True, "still within the renew deadline"
    clock.now += 10.0
    assert a.round() is False
